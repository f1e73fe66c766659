package io.matchx.cluster;

import org.junit.jupiter.api.Test;

import java.util.concurrent.atomic.AtomicInteger;
import java.util.function.BooleanSupplier;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * A scheduled snapshot waits while another member is out of step (it would take the snapshot again
 * in its catch-up, #17), but no longer than until twice the thresholds.
 */
class SnapshotDeferralTest
{
    private static final long INTERVAL_NS = 30_000_000_000L;
    private static final long LOG_BYTES = 2 << 20;
    private static final BooleanSupplier BEHIND = () -> true;
    private static final BooleanSupplier IN_STEP = () -> false;

    @Test
    void dueWithEveryMemberInStepIsTaken()
    {
        assertTrue(SnapshotSchedule.take(INTERVAL_NS, LOG_BYTES, 1_000, LOG_BYTES, IN_STEP));
        assertTrue(SnapshotSchedule.take(INTERVAL_NS, LOG_BYTES, INTERVAL_NS, 1, IN_STEP));
    }

    @Test
    void dueWithAMemberOutOfStepWaits()
    {
        assertFalse(SnapshotSchedule.take(INTERVAL_NS, LOG_BYTES, 1_000, LOG_BYTES, BEHIND));
        assertFalse(SnapshotSchedule.take(INTERVAL_NS, LOG_BYTES, 1_000, 2 * LOG_BYTES - 1, BEHIND));
        assertFalse(SnapshotSchedule.take(INTERVAL_NS, LOG_BYTES, 2 * INTERVAL_NS - 1, 1, BEHIND));
    }

    @Test
    void atTwiceTheThresholdsItIsTakenAnyway()
    {
        assertTrue(SnapshotSchedule.take(INTERVAL_NS, LOG_BYTES, 1_000, 2 * LOG_BYTES, BEHIND));
        assertTrue(SnapshotSchedule.take(INTERVAL_NS, LOG_BYTES, 2 * INTERVAL_NS, 1, BEHIND));
    }

    @Test
    void aTriggerThatIsOffStaysOffWhenDoubled()
    {
        assertFalse(SnapshotSchedule.take(0, LOG_BYTES, Long.MAX_VALUE / 4, LOG_BYTES, BEHIND));
        assertFalse(SnapshotSchedule.take(INTERVAL_NS, 0, 1_000, Long.MAX_VALUE / 4, BEHIND));
    }

    @Test
    void theMembersAreAskedOnlyWhenASnapshotIsDue()
    {
        final AtomicInteger asked = new AtomicInteger();
        final BooleanSupplier counting = () ->
        {
            asked.incrementAndGet();
            return true;
        };
        assertFalse(SnapshotSchedule.take(INTERVAL_NS, LOG_BYTES, 1_000, 1, counting));
        assertFalse(SnapshotSchedule.take(INTERVAL_NS, LOG_BYTES, INTERVAL_NS, 0, counting));
        assertEquals(0, asked.get());
        assertFalse(SnapshotSchedule.take(INTERVAL_NS, LOG_BYTES, 1_000, LOG_BYTES, counting));
        assertEquals(1, asked.get());
    }

    @Test
    void aMemberIsBehindBeyondTheLag()
    {
        assertFalse(MembersBehind.behind(1_000_000, 1_000_000));
        assertFalse(MembersBehind.behind(1_000_000, 1_000_000 + 4096));
        assertFalse(MembersBehind.behind(1_000_000, 1_000_000 - MembersBehind.LAG_BYTES));
        assertTrue(MembersBehind.behind(1_000_000, 1_000_000 - MembersBehind.LAG_BYTES - 1));
    }
}
