package io.matchx.cluster;

import io.aeron.cluster.ConsensusModule;

import java.util.concurrent.TimeUnit;

/**
 * Looser election timing while a member's JVM starts, the configured timing once it is warm.
 *
 * <p>Why: with the shipped timing (120 ms heartbeat timeout, 20 ms election timeout) a member that
 * starts beside two others on a 2-core machine is starved for tens of milliseconds at a time (JIT,
 * class loading, the Python service starting). Aeron's election then goes wrong in two ways, both
 * seen in fresh-clone test runs: (1) all three members are unanimous candidates at start and pick
 * their nomination delay in [0, election timeout / 2), so a 10 ms spread lets a second candidate
 * start a new term while the first still collects votes (two leaders in 50 ms); (2) a follower
 * must join the leader's catch-up and live log within the heartbeat timeout, which a cold media
 * driver misses, and a restarted member then looped in FOLLOWER_CATCHUP_AWAIT for 40 s.
 *
 * <p>How: {@code Election} reads {@code electionTimeoutNs} and {@code leaderHeartbeatTimeoutNs}
 * from the context on every use, while {@code ConsensusModuleAgent} copies the heartbeat timeout
 * in its constructor (its leader-failure detection). So the election timeout is widened before
 * launch, the heartbeat timeout (election deadlines only) right after it, and both are put back a
 * second after the member is first in step: failure detection is the configured one from
 * the first moment, and every later election (a failover) runs the configured timing. The writes
 * are plain fields read by the consensus module's thread; its duty cycle crosses volatile reads
 * each turn, so it sees them within a cycle.
 */
final class StartupGrace
{
    /** Spreads the start-up nominations over up to 150 ms instead of 10 ms. */
    static final long ELECTION_TIMEOUT_MS = 300;
    /** A cold follower's deadline to join the catch-up and live log, and to replicate the log. */
    static final long JOIN_TIMEOUT_MS = 2_000;
    /**
     * How long after the member is first in step the configured timing comes back. Short: while
     * the grace lasts, this member waits up to {@link #JOIN_TIMEOUT_MS} before it nominates
     * itself, which slows a failover in which it is the only member able to lead.
     */
    static final long WARM_AFTER_IN_STEP_MS = 1_000;

    private final ConsensusModule.Context ctx;
    private final long electionTimeoutNs;
    private final long heartbeatTimeoutNs;

    private StartupGrace(final ConsensusModule.Context ctx)
    {
        this.ctx = ctx;
        this.electionTimeoutNs = ctx.electionTimeoutNs();
        this.heartbeatTimeoutNs = ctx.leaderHeartbeatTimeoutNs();
    }

    /** Before launch: widens the election timeout (the consensus module copies nothing of it). */
    static StartupGrace beforeLaunch(final ConsensusModule.Context ctx)
    {
        final StartupGrace grace = new StartupGrace(ctx);
        ctx.electionTimeoutNs(Math.max(grace.electionTimeoutNs, TimeUnit.MILLISECONDS.toNanos(ELECTION_TIMEOUT_MS)));
        return grace;
    }

    /** After launch: widens the election's deadlines, leaving the copied failure detection alone. */
    void afterLaunch()
    {
        ctx.leaderHeartbeatTimeoutNs(Math.max(heartbeatTimeoutNs, TimeUnit.MILLISECONDS.toNanos(JOIN_TIMEOUT_MS)));
    }

    /** Called once the member is first in step: the configured timing after the warm-up. */
    void inStep(final String logPrefix)
    {
        final Thread t = new Thread(() ->
        {
            try
            {
                Thread.sleep(WARM_AFTER_IN_STEP_MS);
            }
            catch (final InterruptedException ex)
            {
                Thread.currentThread().interrupt();
            }
            restore();
            StartPhases.log(logPrefix, "configured election timing in force (heartbeat timeout " +
                TimeUnit.NANOSECONDS.toMillis(heartbeatTimeoutNs) + " ms, election timeout " +
                TimeUnit.NANOSECONDS.toMillis(electionTimeoutNs) + " ms)");
        }, "matchx-startup-grace");
        t.setDaemon(true);
        t.start();
    }

    void restore()
    {
        ctx.electionTimeoutNs(electionTimeoutNs);
        ctx.leaderHeartbeatTimeoutNs(heartbeatTimeoutNs);
    }
}
