package io.matchx.cluster;

import org.agrona.concurrent.IdleStrategy;

import java.util.concurrent.atomic.AtomicReferenceArray;
import java.util.concurrent.locks.LockSupport;

/**
 * A member's agents wake the agent that handles what they just produced, instead of leaving it to
 * find it at the end of its park (up to {@code idle.max.park.us}, 1 ms). One order crosses about
 * a dozen agent hand-offs (issue #20); between two orders sent one at a time every agent has backed
 * off to its longest park, so each hand-off waited half a park on average
 * (bench/reports/rtt_breakdown*.md). Who wakes whom, after a duty cycle that did work:
 *
 * <ul>
 *   <li>the consensus module wakes the media driver (it appended to the log, or sent an append
 *   position, commit position or heartbeat: the driver sends it) and the service (the commit
 *   position may have moved: the service applies the log up to it);</li>
 *   <li>the service wakes the driver (its answers are on the egress publications);</li>
 *   <li>the archive wakes the consensus module (it recorded log: a follower's append position, a
 *   leader's own share of the commit).</li>
 * </ul>
 *
 * The driver wakes nobody: it does work for every heartbeat and status message it sends or
 * receives, thousands of times a second on an idle member, and each would cost a wake-up of
 * another thread. When nothing moves nobody is woken, so an idle member wakes no more often than
 * before (bench/idle_cpu.py); a wake-up costs the waking thread one {@link LockSupport#unpark}.
 * Every idle strategy here parks with {@link LockSupport#parkNanos} (Agrona's backoff), which an
 * unpark ends; an unpark of a thread that is not parked makes its next park return at once
 * (one duty cycle more). The threads are learnt from the first idle call of each agent.
 */
final class AgentWakeups
{
    enum Agent
    {
        DRIVER, ARCHIVE, CONSENSUS, SERVICE
    }

    private static final Agent[] NOBODY = {};
    private final AtomicReferenceArray<Thread> threads = new AtomicReferenceArray<>(Agent.values().length);

    /** Whom {@code agent} wakes after a duty cycle with work. */
    static Agent[] wakes(final Agent agent)
    {
        switch (agent)
        {
            case CONSENSUS:
                return new Agent[]{ Agent.DRIVER, Agent.SERVICE };
            case SERVICE:
                return new Agent[]{ Agent.DRIVER };
            case ARCHIVE:
                return new Agent[]{ Agent.CONSENSUS };
            default:
                return NOBODY;
        }
    }

    /** The thread of {@code agent}, once it has idled; null before. */
    Thread thread(final Agent agent)
    {
        return threads.get(agent.ordinal());
    }

    /** {@code inner} as {@code agent}'s idle strategy: learns its thread, wakes the others. */
    IdleStrategy wrap(final IdleStrategy inner, final Agent agent)
    {
        final Agent[] targets = wakes(agent);
        return new DelegatingIdleStrategy(inner)
        {
            private boolean known;

            public void idle(final int workCount)
            {
                if (!known)
                {
                    known = true;
                    threads.set(agent.ordinal(), Thread.currentThread());
                }
                if (workCount > 0)
                {
                    for (final Agent target : targets)
                    {
                        final Thread thread = threads.get(target.ordinal());
                        if (null != thread)
                        {
                            LockSupport.unpark(thread);
                        }
                    }
                }
                inner.idle(workCount);
            }
        };
    }
}
