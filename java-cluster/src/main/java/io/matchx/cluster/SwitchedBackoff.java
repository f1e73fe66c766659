package io.matchx.cluster;

import org.agrona.concurrent.IdleStrategy;

import java.util.function.BooleanSupplier;

/**
 * Two backoffs, one with a longer longest park, chosen at each idle call: the long one while
 * {@code mayParkLong} says so. The consensus module and the archive park long only while something
 * wakes them and no election runs ({@link AgentWakeups#mayParkLong}); otherwise their timers (a
 * leader's heartbeat every 20 ms, an election's 20 ms timeouts) need the short park's resolution.
 * Work starts both again, so a switch finds the other at its first step.
 */
final class SwitchedBackoff implements IdleStrategy
{
    private final IdleStrategy shortParks;
    private final IdleStrategy longParks;
    private final BooleanSupplier mayParkLong;

    SwitchedBackoff(final IdleStrategy shortParks, final IdleStrategy longParks, final BooleanSupplier mayParkLong)
    {
        this.shortParks = shortParks;
        this.longParks = longParks;
        this.mayParkLong = mayParkLong;
    }

    public void idle(final int workCount)
    {
        if (workCount > 0)
        {
            shortParks.reset();
            longParks.reset();
            return;
        }
        (mayParkLong.getAsBoolean() ? longParks : shortParks).idle();
    }

    public void idle()
    {
        idle(0);
    }

    public void reset()
    {
        shortParks.reset();
        longParks.reset();
    }

    public String alias()
    {
        return "switched-backoff";
    }
}
