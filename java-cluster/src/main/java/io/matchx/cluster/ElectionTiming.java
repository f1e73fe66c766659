package io.matchx.cluster;

import io.aeron.Counter;
import io.aeron.cluster.ClusterMember;
import io.aeron.cluster.ConsensusModule;
import io.aeron.cluster.ElectionState;
import io.aeron.cluster.service.Cluster;
import org.agrona.concurrent.IdleStrategy;

import java.lang.reflect.Field;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.locks.LockSupport;
import java.util.function.Supplier;

/**
 * Keeps Aeron's heartbeat timeout short where it detects a dead leader and long where it only
 * bounds progress, and loosens the election timing while a member's JVM starts.
 *
 * <p>Why: Aeron uses one setting, the leader heartbeat timeout, both to notice a dead leader
 * (we ship 120 ms so that a failover takes about 250 ms) and as the deadline of every step of an
 * election: replicating the log, joining the catch-up replay and the live log, catch-up progress,
 * a new leader waiting for its followers. On this 2-core machine, with three members and a
 * client, those steps often take longer than 120 ms after a fault, and Aeron then abandons the
 * step and starts the election again ("log replication has not progressed", "failed to join
 * catchup log", "no catchup progress"): a restarted member looped in FOLLOWER_CATCHUP_AWAIT for
 * 40 s in one fresh-clone test run, and faults on a fixed schedule paused trading for seconds.
 * A member that starts is also starved (JIT, class loading, the Python service starting): all
 * three members are unanimous candidates at a fresh start and pick their nomination delay in
 * [0, election timeout / 2), so a 10 ms spread let a second candidate start a new term while the
 * first still collected votes (two leaders in 50 ms), and a fresh leader stepped down over its
 * starting followers' silence ("inactive follower quorum").
 *
 * <p>How: {@code Election} reads {@code leaderHeartbeatTimeoutNs} and {@code electionTimeoutNs}
 * from the context on every use; {@code ConsensusModuleAgent} copies the heartbeat timeout into
 * a final field when it is built and uses it for failure detection outside elections, for
 * catch-up progress inside one. One thread per member samples the election state every
 * {@link #POLL_MS} ms and sets both (the field through reflection: Aeron has no setter, HotSpot
 * does not fold final instance fields): the configured value outside an election and while
 * canvassing (when a survivor decides the leader is gone), {@link #PROGRESS_TIMEOUT_MS} in the
 * election's later steps. Until the member is first in step, and for a second after that when it
 * leads, both are {@link #START_TIMEOUT_MS} and the election timeout is at least
 * {@link #START_ELECTION_TIMEOUT_MS} (a second after it is in step the configured one). A
 * follower gets the configured detection the moment it is in step: outside an election it does
 * not answer another member's canvass, and a survivor of a failover needs that answer.
 *
 * <p>The election timeout is Aeron's deadline for three things: the random delay before a
 * nomination, a candidate's wait for votes and a voter's wait for the new leader's first message
 * after its vote. Only the first two need to be short for a fast failover (a candidate with one
 * member dead waits it in full). The third, short, is unsafe: a voter whose wait runs out goes
 * back to canvassing, where Aeron 1.51 takes a {@code NewLeadershipTerm} of <em>any</em> term
 * ({@code Election.onNewLeadershipTerm}), so a voter that had just voted for a candidate with a
 * shorter log in term N+1 could replicate the log of the term-N leader and give it the quorum to
 * commit entries the term-N+1 leader does not have. Seen at load 30-40 on 2 cores with a 20 ms
 * election timeout (bench/reports/stuck_election.md): the old leader's member then never rejoined
 * ("followerLogAwait - joinPosition ... less than logPosition", its service ahead of the new
 * leader's log) and the members' state hashes differed. So the context holds
 * {@link #BALLOT_WAIT_MS} (at least) in every state but CANDIDATE_BALLOT, where it holds the
 * intended value; {@link NominationOrder} scales its delay fraction so that a nomination waits
 * what the intended value gives. A sampling lag only lengthens a candidate's wait, never
 * shortens a voter's.
 *
 * <p>A candidate's wait is the intended one only once enough voters have answered to decide the
 * ballot (with 3 members: one). Aeron decides at the end of the wait: a quorum of yes votes
 * makes it leader, anything else sends it back to CANVASS. A vote that comes in after that wait
 * has already moved its voter to FOLLOWER_BALLOT, where it waits {@link #BALLOT_WAIT_MS} for a
 * leader that will not come and answers no canvass meanwhile, so the next ballot waits for it:
 * with 2x3 partitions on 2 cores (bench/reports/auth_revocation_failover*.md) a vote later than
 * 20 ms cost a failover a whole second, often. So while too few voters have answered, the
 * candidate waits up to {@link #CANDIDATE_VOTE_WAIT_MS} (well inside a voter's wait); a split
 * vote (a "no") or a vote in time still ends the ballot after the intended timeout.
 *
 * <p>Writes are plain fields read by the consensus module's thread; its duty cycle crosses
 * volatile reads each turn, so it sees them within a cycle. A deadline is recomputed from the
 * current value on every duty cycle, so the sampling lag ({@link #POLL_MS}) shifts a deadline by
 * at most that much. If the field cannot be reached (another Aeron version) the member logs one
 * warning and the consensus module keeps the configured value.
 *
 * <p>Outside an election, once warm, nothing the thread sets changes until the election state
 * does, so it then waits up to {@link #QUIET_POLL_MS} instead of {@link #POLL_MS} (200 wake-ups a
 * second were ~0.4 % of a core per idle member, bench/reports/idle_cpu.md). It is not late for
 * an election that begins: the consensus module's own idle strategy, which its thread calls at
 * the end of every duty cycle, wakes it as soon as the election state counter changes
 * ({@link #wakeOnChange}), sooner than a {@link #POLL_MS} sample would. Inside an election, and
 * until warm, it samples every {@link #POLL_MS} as before ({@link JoinDeadlock} needs that too).
 */
final class ElectionTiming implements AutoCloseable
{
    static final long POLL_MS = 5;
    /** The longest wait between samples outside an election once warm (a change wakes it at once). */
    static final long QUIET_POLL_MS = 1_000;
    /** A deadline for an election step after a fault, when the member is warm. */
    static final long PROGRESS_TIMEOUT_MS = 1_000;
    /** The same while the member's JVM starts. */
    static final long START_TIMEOUT_MS = 2_000;
    /** Spreads the start-up nominations over up to 150 ms instead of 10 ms. */
    static final long START_ELECTION_TIMEOUT_MS = 300;
    /** How long after the member is first in step the start-up timing lasts (when it leads). */
    static final long WARM_AFTER_IN_STEP_MS = 1_000;
    /** Election steps logged one by one; past that, one line in this many (an election that loops). */
    static final int LOGGED_STEPS = 20;
    /** A voter's wait for the leader it voted for (the context's election timeout outside a candidacy). */
    static final long BALLOT_WAIT_MS = 1_000;
    /** A candidate's longest wait for the first answers to its vote requests (less than BALLOT_WAIT_MS). */
    static final long CANDIDATE_VOTE_WAIT_MS = 300;

    private final ConsensusModule.Context ctx;
    private final String logPrefix;
    private final long heartbeatTimeoutNs;
    private final long electionTimeoutNs;
    private final long progressTimeoutNs;
    private final long startTimeoutNs;
    private final long ballotWaitNs;
    private final long candidateVoteWaitNs;
    /** What a candidate waits for votes and what a nomination delay is a fraction of (NominationOrder). */
    private volatile long intendedElectionTimeoutNs;
    private Object agent;
    private volatile WatchedCounter electionState;
    private volatile WatchedCounter role;
    /** Read for {@link CatchupStall}; null where tests start the sampler on counters of their own. */
    private volatile WatchedCounter commitPosition;
    private Field agentTimeout;
    /** ConsensusModuleAgent.election and Election.clusterMembers: the votes of a ballot. */
    private Field agentElection;
    private Field electionMembers;
    private long agentValueNs;
    /** The sampling thread, woken by {@link #wakeOnChange}; null until it starts. */
    private volatile Thread sampler;
    /** Set once the consensus module's idle strategy wakes the sampler: only then may it wait long. */
    private volatile boolean wokenOnChange;
    private long quietPollNs = TimeUnit.MILLISECONDS.toNanos(QUIET_POLL_MS);
    private volatile long samples;

    private ElectionTiming(final ConsensusModule.Context ctx, final String logPrefix)
    {
        this.ctx = ctx;
        this.logPrefix = logPrefix;
        this.heartbeatTimeoutNs = ctx.leaderHeartbeatTimeoutNs();
        this.electionTimeoutNs = ctx.electionTimeoutNs();
        this.progressTimeoutNs = Math.max(heartbeatTimeoutNs, TimeUnit.MILLISECONDS.toNanos(PROGRESS_TIMEOUT_MS));
        this.startTimeoutNs = Math.max(heartbeatTimeoutNs, TimeUnit.MILLISECONDS.toNanos(START_TIMEOUT_MS));
        this.ballotWaitNs = ballotWaitNs(electionTimeoutNs);
        this.candidateVoteWaitNs = Math.min(ballotWaitNs / 2,
            Math.max(electionTimeoutNs, TimeUnit.MILLISECONDS.toNanos(CANDIDATE_VOTE_WAIT_MS)));
        this.intendedElectionTimeoutNs = Math.max(electionTimeoutNs,
            TimeUnit.MILLISECONDS.toNanos(START_ELECTION_TIMEOUT_MS));
    }

    /** The context's election timeout outside a candidacy: never shorter than the configured one. */
    static long ballotWaitNs(final long configuredElectionTimeoutNs)
    {
        return Math.max(configuredElectionTimeoutNs, TimeUnit.MILLISECONDS.toNanos(BALLOT_WAIT_MS));
    }

    /** The context's election timeout in {@code state}: the intended one only while a candidate. */
    static long electionTimeoutIn(final ElectionState state, final long intendedNs, final long ballotWaitNs)
    {
        return state == ElectionState.CANDIDATE_BALLOT ? intendedNs : Math.max(intendedNs, ballotWaitNs);
    }

    /**
     * As {@link #electionTimeoutIn(ElectionState, long, long)}, for a candidate that may still be
     * waiting for the first answers to its vote requests ({@code votesOutstanding}).
     */
    static long electionTimeoutIn(
        final ElectionState state,
        final long intendedNs,
        final long ballotWaitNs,
        final boolean votesOutstanding,
        final long candidateVoteWaitNs)
    {
        final long ns = electionTimeoutIn(state, intendedNs, ballotWaitNs);
        return state == ElectionState.CANDIDATE_BALLOT && votesOutstanding ? Math.max(ns, candidateVoteWaitNs) : ns;
    }

    /**
     * Whether too few of the other members have answered this candidate's vote requests to decide
     * its ballot: a quorum needs {@code quorumThreshold - 1} yes votes besides its own, and one
     * "no" decides it (Aeron's {@code isQuorumLeader}). Answers of this ballot only: becoming a
     * candidate clears every other member's vote.
     */
    static boolean votesOutstanding(final ClusterMember[] members, final int selfId)
    {
        int answered = 0;
        for (final ClusterMember member : members)
        {
            if (member.id() != selfId)
            {
                final Boolean vote = member.vote();
                if (Boolean.FALSE.equals(vote))
                {
                    return false;
                }
                if (null != vote)
                {
                    answered++;
                }
            }
        }
        return answered < ClusterMember.quorumThreshold(members.length) - 1;
    }

    /** The running candidacy's vote state, read on this thread without locks: a hint that only lengthens a wait. */
    private boolean candidateVotesOutstanding()
    {
        if (null == agent || null == agentElection)
        {
            return false;
        }
        try
        {
            final Object election = agentElection.get(agent);
            if (null == election)
            {
                return false;
            }
            final ClusterMember[] members = (ClusterMember[])electionMembers.get(election);
            return null != members && votesOutstanding(members, ctx.clusterMemberId());
        }
        catch (final IllegalAccessException | RuntimeException ex)
        {
            warn("a candidate waits the configured election timeout for its votes (" + ex + ")");
            agentElection = null;
            return false;
        }
    }

    long intendedElectionTimeoutNs()
    {
        return intendedElectionTimeoutNs;
    }

    /**
     * Before launch: as {@link #beforeLaunch(ConsensusModule.Context, String)}, and the consensus
     * module's idle strategy ({@code idle}, what the context would otherwise get) wakes the
     * sampler when the election state changes, so that it may wait long outside elections.
     */
    static ElectionTiming beforeLaunch(
        final ConsensusModule.Context ctx, final String logPrefix, final Supplier<IdleStrategy> idle)
    {
        final ElectionTiming timing = beforeLaunch(ctx, logPrefix);
        ctx.idleStrategySupplier(() -> timing.wakeOnChange(idle.get(), () ->
        {
            final Counter counter = ctx.electionStateCounter();
            // read on the consensus module's own thread, which also closes the counter: never unmapped here
            return null == counter || counter.isClosed() ? WatchedCounter.CLOSED : counter.get();
        }));
        return timing;
    }

    /** Before launch: the start-up election timeout (the consensus module copies nothing of it). */
    static ElectionTiming beforeLaunch(final ConsensusModule.Context ctx, final String logPrefix)
    {
        final ElectionTiming timing = new ElectionTiming(ctx, logPrefix);
        ctx.electionTimeoutNs(Math.max(timing.intendedElectionTimeoutNs, timing.ballotWaitNs));
        if (ctx.random() instanceof NominationOrder)
        {
            ((NominationOrder)ctx.random()).scaleTo(timing::intendedElectionTimeoutNs, ctx::electionTimeoutNs);
        }
        return timing;
    }

    /** After launch: the start-up deadlines, then the thread that keeps them right. */
    void afterLaunch(final ConsensusModule consensusModule)
    {
        ctx.leaderHeartbeatTimeoutNs(startTimeoutNs);
        try
        {
            final Field conductor = ConsensusModule.class.getDeclaredField("conductor");
            conductor.setAccessible(true);
            final Object found = conductor.get(consensusModule);
            final Field timeout = found.getClass().getDeclaredField("leaderHeartbeatTimeoutNs");
            timeout.setAccessible(true);
            timeout.setLong(found, startTimeoutNs);
            agent = found;
            agentTimeout = timeout;
            agentValueNs = startTimeoutNs;
            try
            {
                final Field election = found.getClass().getDeclaredField("election");
                election.setAccessible(true);
                final Field members = election.getType().getDeclaredField("clusterMembers");
                members.setAccessible(true);
                agentElection = election;
                electionMembers = members;
            }
            catch (final ReflectiveOperationException | RuntimeException ex)
            {
                warn("a candidate waits the configured election timeout for its votes (" + ex + ")");
            }
        }
        catch (final ReflectiveOperationException | RuntimeException ex)
        {
            warn("the consensus module's heartbeat timeout stays as configured (" + ex +
                "): catch-up progress and a fresh leader's check of its followers use it");
        }
        commitPosition = WatchedCounter.of(ctx.commitPositionCounter());
        start(WatchedCounter.of(ctx.electionStateCounter()), WatchedCounter.of(ctx.clusterNodeRoleCounter()));
    }

    /** The sampling thread over these counters (tests give their own). */
    void start(final WatchedCounter electionState, final WatchedCounter role)
    {
        this.electionState = electionState;
        this.role = role;
        final Thread t = new Thread(this::run, "matchx-election-timing");
        t.setDaemon(true);
        sampler = t;
        t.start();
    }

    /**
     * {@code idle} as the consensus module's idle strategy, which also wakes the sampler whenever
     * {@code electionState} (read on the consensus module's thread, once per duty cycle: one
     * volatile read) has changed since its last duty cycle.
     */
    IdleStrategy wakeOnChange(final IdleStrategy idle, final java.util.function.LongSupplier electionState)
    {
        wokenOnChange = true;
        return new IdleStrategy()
        {
            private long seen = WatchedCounter.CLOSED;

            private void check()
            {
                final long state = electionState.getAsLong();
                if (state != seen)
                {
                    seen = state;
                    final Thread t = sampler;
                    if (null != t)
                    {
                        LockSupport.unpark(t);
                    }
                }
            }

            public void idle(final int workCount)
            {
                check();
                idle.idle(workCount);
            }

            public void idle()
            {
                check();
                idle.idle();
            }

            public void reset()
            {
                idle.reset();
            }

            public String alias()
            {
                return idle.alias();
            }
        };
    }

    /** Samples taken so far (tests). */
    long samples()
    {
        return samples;
    }

    /** How long a warm sampler waits outside an election (tests shorten or lengthen it). */
    void quietPollMs(final long ms)
    {
        quietPollNs = TimeUnit.MILLISECONDS.toNanos(ms);
    }

    /** The member's election state as our watcher threads read it (closed with this object). */
    WatchedCounter electionState()
    {
        return electionState;
    }

    /** Before the member's Aeron client closes: no counter is read after this returns. */
    @Override
    public void close()
    {
        final WatchedCounter state = electionState;
        final WatchedCounter memberRole = role;
        final WatchedCounter commit = commitPosition;
        if (null != state)
        {
            state.close();
            memberRole.close();
        }
        if (null != commit)
        {
            commit.close();
        }
    }

    private void run()
    {
        long inStepAtNs = 0;
        boolean warm = false;
        ElectionState last = null;
        long electionStartedNs = 0;
        long stateSinceNs = System.nanoTime();
        int steps = 0;
        final JoinDeadlock deadlock = new JoinDeadlock(ctx.clusterId(), ctx.clusterMemberId(), logPrefix);
        final CatchupStall catchupStall = new CatchupStall(logPrefix);
        try
        {
            while (true)
            {
                final long nowNs = System.nanoTime();
                final long stateCode = electionState.get();
                final long roleCode = role.get();
                if (stateCode == WatchedCounter.CLOSED || roleCode == WatchedCounter.CLOSED)
                {
                    return;
                }
                final ElectionState state = stateOf(stateCode);
                if (inStepAtNs != 0 && state != last)
                {
                    // every election after the start, step by step (StartPhases logs the first):
                    // without it a partition whose members never finish an election shows only
                    // Aeron's timeout warnings. Sampled: a step shorter than POLL_MS can be missed.
                    if (last == ElectionState.CLOSED)
                    {
                        electionStartedNs = nowNs;
                        steps = 0;
                    }
                    steps++;
                    if (steps <= LOGGED_STEPS || steps % LOGGED_STEPS == 0)
                    {
                        logElection(state, TimeUnit.NANOSECONDS.toMillis(nowNs - electionStartedNs), steps);
                    }
                }
                if (state != last)
                {
                    stateSinceNs = nowNs;
                }
                last = state;
                if (state != ElectionState.CLOSED)
                {
                    deadlock.check(TimeUnit.NANOSECONDS.toMillis(nowNs),
                        TimeUnit.NANOSECONDS.toMillis(nowNs - stateSinceNs), state.name());
                    final WatchedCounter commit = commitPosition;
                    if (null != commit)
                    {
                        catchupStall.check(TimeUnit.NANOSECONDS.toMillis(nowNs), state.name(), commit.get());
                    }
                }
                if (inStepAtNs == 0 && state == ElectionState.CLOSED)
                {
                    inStepAtNs = nowNs;
                }
                final boolean starting = inStepAtNs == 0;
                final boolean leads = roleCode == Cluster.Role.LEADER.code();
                final boolean startLeader = !starting && leads &&
                    nowNs - inStepAtNs < TimeUnit.MILLISECONDS.toNanos(WARM_AFTER_IN_STEP_MS);
                if (!warm && !starting && nowNs - inStepAtNs >= TimeUnit.MILLISECONDS.toNanos(WARM_AFTER_IN_STEP_MS))
                {
                    warm = true;
                    intendedElectionTimeoutNs = electionTimeoutNs;
                    StartPhases.log(logPrefix, "configured election timing in force (heartbeat timeout " +
                        TimeUnit.NANOSECONDS.toMillis(heartbeatTimeoutNs) + " ms outside elections, " +
                        TimeUnit.NANOSECONDS.toMillis(progressTimeoutNs) + " ms per election step; election timeout " +
                        TimeUnit.NANOSECONDS.toMillis(electionTimeoutNs) + " ms, a voter waits " +
                        TimeUnit.NANOSECONDS.toMillis(ballotWaitNs) + " ms for its leader, a candidate up to " +
                        TimeUnit.NANOSECONDS.toMillis(candidateVoteWaitNs) + " ms for its first votes)");
                }
                final long valueNs;
                if (starting || startLeader)
                {
                    valueNs = startTimeoutNs;
                }
                else if (isProgressStep(state))
                {
                    valueNs = progressTimeoutNs;
                }
                else
                {
                    valueNs = heartbeatTimeoutNs;
                }
                set(valueNs);
                final long electionNs = electionTimeoutIn(state, intendedElectionTimeoutNs, ballotWaitNs,
                    state == ElectionState.CANDIDATE_BALLOT && candidateVotesOutstanding(), candidateVoteWaitNs);
                if (ctx.electionTimeoutNs() != electionNs)
                {
                    ctx.electionTimeoutNs(electionNs);
                }
                samples++;
                final boolean quiet = warm && wokenOnChange && state == ElectionState.CLOSED;
                // a wake-up from the consensus module ends either wait early (LockSupport.unpark)
                LockSupport.parkNanos(quiet ? quietPollNs : TimeUnit.MILLISECONDS.toNanos(POLL_MS));
                if (Thread.currentThread().isInterrupted())
                {
                    return;
                }
            }
        }
        catch (final RuntimeException ex)
        {
            // the member is closing under us
        }
    }

    private static ElectionState stateOf(final long code)
    {
        try
        {
            return ElectionState.get(code);
        }
        catch (final IllegalArgumentException ex)
        {
            return ElectionState.INIT;  // not set yet
        }
    }

    /**
     * Steps from the vote on: a deadline there bounds progress, not the leader's silence. A
     * follower's ballot counts too: it waits on the election timeout alone, and the log
     * replication that follows it fixes its deadline when it starts, before a sample could
     * catch the new state.
     */
    static boolean isProgressStep(final ElectionState state)
    {
        switch (state)
        {
            case INIT:
            case CANVASS:
            case NOMINATE:
            case CANDIDATE_BALLOT:
            case CLOSED:
                return false;
            default:
                return true;
        }
    }

    private void set(final long valueNs)
    {
        if (ctx.leaderHeartbeatTimeoutNs() != valueNs)
        {
            ctx.leaderHeartbeatTimeoutNs(valueNs);
        }
        if (agent != null && agentValueNs != valueNs)
        {
            try
            {
                agentTimeout.setLong(agent, valueNs);
                agentValueNs = valueNs;
            }
            catch (final IllegalAccessException ex)
            {
                warn("could not set the consensus module's heartbeat timeout: " + ex);
                agent = null;
            }
        }
    }

    private void logElection(final ElectionState state, final long sinceMs, final int step)
    {
        System.err.println(logPrefix + " INFO election: " + state +
            (state == ElectionState.CLOSED ? ": in step" : "") + " (+" + sinceMs + " ms since it began, step " +
            step + (step > LOGGED_STEPS ? ", logging one step in " + LOGGED_STEPS : "") + ")");
        System.err.flush();
    }

    private void warn(final String what)
    {
        System.err.println(logPrefix + " WARN start: " + what);
        System.err.flush();
    }
}
