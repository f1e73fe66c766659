package io.matchx.cluster;

import org.agrona.concurrent.IdleStrategy;

/**
 * An idle strategy that adds something to another's {@link #idle(int)} (an agent's duty cycle
 * end) and passes everything else through: {@link AgentWakeups}, {@link LatencyTrace} and the
 * client's driver wake-up ({@code ClusterClient.wakeDriver}) wrap the backoff they are given.
 */
public abstract class DelegatingIdleStrategy implements IdleStrategy
{
    protected final IdleStrategy inner;

    protected DelegatingIdleStrategy(final IdleStrategy inner)
    {
        this.inner = inner;
    }

    public void idle()
    {
        inner.idle();
    }

    public void reset()
    {
        inner.reset();
    }

    public String alias()
    {
        return inner.alias();
    }
}
