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
 * <p>The driver wakes nobody after any work: it does work for every heartbeat and status message
 * it sends or receives, thousands of times a second on an idle member; with woken parks (below) it
 * wakes the consensus module and the archive only after a cycle that moved a payload. A wake-up costs the waking thread one
 * {@link LockSupport#unpark}. Every idle strategy here parks with {@link LockSupport#parkNanos}
 * (Agrona's backoff), which an unpark ends; an unpark of a thread that is not parked makes its
 * next park return at once (one duty cycle more). The threads are learnt from the first idle call
 * of each agent.
 *
 * <p>With woken parks ({@code idle.woken.max.park.us} above {@code idle.max.park.us}) the consensus
 * module and the archive may park longer than the others, because whatever they wait for now wakes
 * them: the driver after a duty cycle that moved a payload ({@link PayloadWakeups}: log, ingress and
 * consensus frames arrive over UDP, which only the driver sees), the archive wakes the consensus
 * module after a cycle with work (it recorded log: a follower's append position, the leader's own),
 * the service wakes it after a cycle with work (its acks and closes come over IPC, which no driver
 * cycle carries), and while an election runs the consensus module wakes the archive after a cycle
 * with work (its recording and replication requests) and both keep the short park
 * ({@link #mayParkLong}: an election's steps and timeouts are tens of ms).
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
    private final boolean wokenParks;
    /** A running driver wakes this member's consensus module and archive ({@link PayloadWakeups#add}). */
    private volatile boolean drivenByDriver;
    /**
     * Written by the consensus module's idle strategy when it changes; a member starts in an
     * election, and a consensus module that never says otherwise keeps the others' parks short.
     */
    private volatile boolean inElection = true;

    /** @param all the {@code all} mode; otherwise {@code commit}. */
    AgentWakeups(final boolean all)
    {
        this(all, false);
    }

    /** @param wokenParks the consensus module and the archive park long and are woken for it (class doc). */
    AgentWakeups(final boolean all, final boolean wokenParks)
    {
        this.all = all;
        this.wokenParks = wokenParks;
    }

    /** Whom {@code agent} wakes (in the {@code all} mode, or in {@code commit} when the commit moved). */
    static Agent[] wakes(final Agent agent, final boolean all)
    {
        return wakes(agent, all, false);
    }

    /** As {@link #wakes(Agent, boolean)}, with woken parks: the archive and the service also wake the consensus module. */
    static Agent[] wakes(final Agent agent, final boolean all, final boolean wokenParks)
    {
        switch (agent)
        {
            case CONSENSUS:
                return new Agent[]{ Agent.DRIVER, Agent.SERVICE };
            case SERVICE:
                return wokenParks ? new Agent[]{ Agent.DRIVER, Agent.CONSENSUS } : new Agent[]{ Agent.DRIVER };
            case ARCHIVE:
                return all || wokenParks ? new Agent[]{ Agent.CONSENSUS } : NOBODY;
            default:
                return NOBODY;
        }
    }

    boolean wokenParks()
    {
        return wokenParks;
    }

    /** The consensus module and the archive may park long: a driver wakes them and no election runs. */
    boolean mayParkLong()
    {
        return drivenByDriver && !inElection;
    }

    void drivenByDriver(final boolean driven)
    {
        drivenByDriver = driven;
    }

    /** A driver's duty cycle moved a payload: the consensus module and the archive look for it. */
    void payloadMoved()
    {
        unpark(Agent.CONSENSUS);
        unpark(Agent.ARCHIVE);
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
        final Agent[] targets = wakes(agent, all, wokenParks);
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
                final boolean election = null != electionRunning && electionRunning.getAsBoolean();
                if (null != electionRunning && election != inElection)
                {
                    inElection = election;
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
                    else if (election)
                    {
                        unpark(Agent.SERVICE);
                    }
                    if (election && wokenParks)
                    {
                        unpark(Agent.ARCHIVE);
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
