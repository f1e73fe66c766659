package io.matchx.cluster;

import org.agrona.concurrent.IdleStrategy;

import java.util.concurrent.atomic.AtomicReferenceArray;
import java.util.concurrent.locks.LockSupport;
import java.util.function.BooleanSupplier;
import java.util.function.LongSupplier;

/**
 * A member's agents wake the agent that handles what they just produced, instead of leaving it to
 * find it at the end of its park (up to {@code idle.max.park.us}, 1 ms). One order crosses about
 * a dozen agent hand-offs (issue #20); between two orders sent one at a time every agent has backed
 * off to its longest park, so each hand-off waited half a park on average
 * (bench/reports/rtt_breakdown.md: the leader's service alone ~1.5 ms after the commit).
 *
 * <p>{@code agent.wakeups=commit} (the default): after a duty cycle in which the commit position
 * moved, the consensus module wakes the service (which applies the log up to it) and the media
 * driver (which sends the commit to the followers); after a cycle with work the service wakes the
 * driver (its answers are on the egress publications). Neither happens on an idle member: the
 * commit moves only with the log, and an idle service's work is its status file, 5 times a
 * second. While an election runs the consensus module also wakes the service after any cycle with
 * work (it hands the service the new log and waits for its answer), so a woken service may park
 * far longer than the others ({@code idle.service.max.park.us}). {@code all}: the consensus module wakes both after any cycle with work (a log append, an
 * append position to send), and the archive wakes the consensus module after any cycle with work
 * (it recorded log); their heartbeats and timers then wake the driver and the consensus module
 * ~150-250 times a second more on an idle member (+0.4-0.6 % of a core,
 * bench/reports/idle_cpu_wakeups*.md). {@code off}: nobody is woken.
 *
 * <p>The driver wakes nobody: it does work for every heartbeat and status message it sends or
 * receives, thousands of times a second on an idle member. A wake-up costs the waking thread one
 * {@link LockSupport#unpark}. Every idle strategy here parks with {@link LockSupport#parkNanos}
 * (Agrona's backoff), which an unpark ends; an unpark of a thread that is not parked makes its
 * next park return at once (one duty cycle more). The threads are learnt from the first idle call
 * of each agent.
 */
final class AgentWakeups
{
    enum Agent
    {
        DRIVER, ARCHIVE, CONSENSUS, SERVICE
    }

    static final String OFF = "off";
    static final String COMMIT = "commit";
    static final String ALL = "all";

    private static final Agent[] NOBODY = {};
    private final AtomicReferenceArray<Thread> threads = new AtomicReferenceArray<>(Agent.values().length);
    private final boolean all;

    /** @param all the {@code all} mode; otherwise {@code commit}. */
    AgentWakeups(final boolean all)
    {
        this.all = all;
    }

    /** Whom {@code agent} wakes (in the {@code all} mode, or in {@code commit} when the commit moved). */
    static Agent[] wakes(final Agent agent, final boolean all)
    {
        switch (agent)
        {
            case CONSENSUS:
                return new Agent[]{ Agent.DRIVER, Agent.SERVICE };
            case SERVICE:
                return new Agent[]{ Agent.DRIVER };
            case ARCHIVE:
                return all ? new Agent[]{ Agent.CONSENSUS } : NOBODY;
            default:
                return NOBODY;
        }
    }

    private void unpark(final Agent agent)
    {
        final Thread thread = threads.get(agent.ordinal());
        if (null != thread)
        {
            LockSupport.unpark(thread);
        }
    }

    /** The thread of {@code agent}, once it has idled; null before. */
    Thread thread(final Agent agent)
    {
        return threads.get(agent.ordinal());
    }

    /**
     * {@code inner} as {@code agent}'s idle strategy: learns its thread, wakes the others.
     *
     * @param commitPosition the consensus module's commit position (read on its own thread), for
     *                       the consensus module's strategy in the {@code commit} mode; else null.
     */
    IdleStrategy wrap(final IdleStrategy inner, final Agent agent, final LongSupplier commitPosition)
    {
        return wrap(inner, agent, commitPosition, null);
    }

    /**
     * As {@link #wrap(IdleStrategy, Agent, LongSupplier)}; {@code electionRunning} (the consensus
     * module's, read on its thread) makes a cycle with work wake the service while it says true.
     */
    IdleStrategy wrap(
        final IdleStrategy inner, final Agent agent, final LongSupplier commitPosition, final BooleanSupplier electionRunning)
    {
        final Agent[] targets = wakes(agent, all);
        final boolean onCommit = agent == Agent.CONSENSUS && !all;
        return new DelegatingIdleStrategy(inner)
        {
            private boolean known;
            private long lastCommit = Long.MIN_VALUE;

            public void idle(final int workCount)
            {
                if (!known)
                {
                    known = true;
                    threads.set(agent.ordinal(), Thread.currentThread());
                }
                if (workCount > 0 && targets.length > 0)
                {
                    if (!onCommit || commitMoved())
                    {
                        for (final Agent target : targets)
                        {
                            unpark(target);
                        }
                    }
                    else if (null != electionRunning && electionRunning.getAsBoolean())
                    {
                        unpark(Agent.SERVICE);
                    }
                }
                inner.idle(workCount);
            }

            private boolean commitMoved()
            {
                final long commit = null == commitPosition ? Long.MIN_VALUE : commitPosition.getAsLong();
                if (commit == lastCommit)
                {
                    return false;
                }
                lastCommit = commit;
                return true;
            }
        };
    }
}
