package io.matchx.cluster;

import org.junit.jupiter.api.Test;

import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

class CatchupStallTest
{
    private static final long LIMIT = CatchupStall.RESTART_AFTER_MS;

    @Test
    void aCatchupWhoseCommitPositionStandsStillIsRestartedOnce()
    {
        final CatchupStall stall = new CatchupStall("[test]");
        assertFalse(stall.stalled(1_000, CatchupStall.STEP, 4096));
        assertFalse(stall.stalled(1_000 + LIMIT - 1, CatchupStall.STEP, 4096));
        assertTrue(stall.stalled(1_000 + LIMIT, CatchupStall.STEP, 4096));
        assertFalse(stall.stalled(1_000 + 2 * LIMIT, CatchupStall.STEP, 4096), "asks for one restart only");
    }

    @Test
    void aMovingCatchupIsNeverAStallHoweverLong()
    {
        final CatchupStall stall = new CatchupStall("[test]");
        for (long t = 0, position = 0; t <= 10 * LIMIT; t += LIMIT / 2, position += 64)
        {
            assertFalse(stall.stalled(t, CatchupStall.STEP, position));
        }
    }

    @Test
    void otherStepsAndALeftStepStartTheClockAgain()
    {
        final CatchupStall stall = new CatchupStall("[test]");
        assertFalse(stall.stalled(0, "CANVASS", 4096));
        assertFalse(stall.stalled(LIMIT, "CANVASS", 4096), "only FOLLOWER_CATCHUP has no deadline of Aeron's");
        assertFalse(stall.stalled(LIMIT + 1, CatchupStall.STEP, 4096));
        assertFalse(stall.stalled(LIMIT + 2, "FOLLOWER_LOG_INIT", 4096));
        assertFalse(stall.stalled(LIMIT + 3, CatchupStall.STEP, 4096));
        assertFalse(stall.stalled(2 * LIMIT + 2, CatchupStall.STEP, 4096));
        assertTrue(stall.stalled(2 * LIMIT + 3, CatchupStall.STEP, 4096));
    }
}
