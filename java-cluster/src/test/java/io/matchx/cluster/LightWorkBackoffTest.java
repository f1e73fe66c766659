package io.matchx.cluster;

import org.agrona.concurrent.IdleStrategy;
import org.junit.jupiter.api.Test;

import java.util.ArrayList;
import java.util.List;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertSame;

class LightWorkBackoffTest
{
    /** Records the work counts it is given. */
    private static final class Recording implements IdleStrategy
    {
        final List<Integer> counts = new ArrayList<>();

        public void idle(final int workCount)
        {
            counts.add(workCount);
        }

        public void idle()
        {
            counts.add(0);
        }

        public void reset()
        {
        }
    }

    @Test
    void aLoneIdleFrameLeavesTheBackoffGoingAndAConsensusMessageStartsItAgain()
    {
        final Recording backoff = new Recording();
        final IdleStrategy driver = LightWorkBackoff.of(backoff, LightWorkBackoff.DEFAULT_LIGHT_WORK);
        driver.idle(0);
        driver.idle(32); // a publication's heartbeat
        driver.idle(36); // a status message
        driver.idle(40 + 3); // a setup frame and a few conductor commands
        driver.idle(64); // an append or commit position: on an order's path
        driver.idle(300); // an order
        assertEquals(List.of(0, 0, 0, 0, 64, 300), backoff.counts);
    }

    @Test
    void zeroTurnsItOff()
    {
        final Recording backoff = new Recording();
        assertSame(backoff, LightWorkBackoff.of(backoff, 0));
    }
}
