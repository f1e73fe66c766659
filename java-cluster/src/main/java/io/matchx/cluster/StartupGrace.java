package io.matchx.cluster;

import io.aeron.cluster.ConsensusModule;
import io.aeron.cluster.service.Cluster;

import java.lang.reflect.Field;
import java.util.concurrent.TimeUnit;

/**
 * Looser timing while a member's JVM starts, the configured timing once it is warm.
 *
 * <p>Why: with the shipped timing (120 ms heartbeat timeout, 20 ms election timeout) a member that
 * starts beside two others on a 2-core machine is starved for tens of milliseconds at a time (JIT,
 * class loading, the Python service starting). Aeron then goes wrong in three ways, all seen in
 * fresh-clone test runs and the failover bench: (1) all three members are unanimous candidates at
 * start and pick their nomination delay in [0, election timeout / 2), so a 10 ms spread lets a
 * second candidate start a new term while the first still collects votes (two leaders in 50 ms);
 * (2) a follower must join the leader's catch-up and live log within the heartbeat timeout, which
 * a cold media driver misses; (3) a catch-up whose append position stalls for one heartbeat
 * timeout is abandoned ("no catchup progress") and started again, and a fresh leader steps down
 * when its starting followers are silent that long ("inactive follower quorum"). A restarted
 * member looped like this in FOLLOWER_CATCHUP_AWAIT for 40 s.
 *
 * <p>How: {@code Election} reads {@code electionTimeoutNs} and {@code leaderHeartbeatTimeoutNs}
 * from the context on every use: the election timeout is widened before launch, the heartbeat
 * timeout right after it. {@code ConsensusModuleAgent} copies the heartbeat timeout into a final
 * field when it is built (its failure detection, the catch-up progress check, the leader's check
 * of its followers): that field is widened through reflection (Aeron has no setter; HotSpot does
 * not fold final instance fields) and put back as soon as the member is first in step, or a
 * second later when it leads. While it is wide a follower notices a dead leader late, which is
 * why it ends at once on a follower: a member outside an election does not answer another's
 * canvass, and the survivor of a failover needs that answer. The context's values come back a
 * second after the member is in step (they only shape elections, and a member in an election
 * answers canvasses at once). If the field cannot be reached (another Aeron version) the member
 * logs one warning and starts with the copied timeout as configured.
 *
 * <p>The writes are plain fields read by the consensus module's thread; its duty cycle crosses
 * volatile reads each turn, so it sees them within a cycle.
 */
final class StartupGrace
{
    /** Spreads the start-up nominations over up to 150 ms instead of 10 ms. */
    static final long ELECTION_TIMEOUT_MS = 300;
    /** A cold member's deadline to join a log, replicate it, or make catch-up progress. */
    static final long JOIN_TIMEOUT_MS = 2_000;
    /** How long after the member is first in step the election timing comes back. */
    static final long WARM_AFTER_IN_STEP_MS = 1_000;

    private final ConsensusModule.Context ctx;
    private final long electionTimeoutNs;
    private final long heartbeatTimeoutNs;
    private final String logPrefix;
    private Object agent;
    private Field agentTimeout;

    private StartupGrace(final ConsensusModule.Context ctx, final String logPrefix)
    {
        this.ctx = ctx;
        this.logPrefix = logPrefix;
        this.electionTimeoutNs = ctx.electionTimeoutNs();
        this.heartbeatTimeoutNs = ctx.leaderHeartbeatTimeoutNs();
    }

    /** Before launch: widens the election timeout (the consensus module copies nothing of it). */
    static StartupGrace beforeLaunch(final ConsensusModule.Context ctx, final String logPrefix)
    {
        final StartupGrace grace = new StartupGrace(ctx, logPrefix);
        ctx.electionTimeoutNs(Math.max(grace.electionTimeoutNs, TimeUnit.MILLISECONDS.toNanos(ELECTION_TIMEOUT_MS)));
        return grace;
    }

    /** After launch: widens the election's deadlines and the consensus module's copied timeout. */
    void afterLaunch(final ConsensusModule consensusModule)
    {
        final long wideNs = Math.max(heartbeatTimeoutNs, TimeUnit.MILLISECONDS.toNanos(JOIN_TIMEOUT_MS));
        ctx.leaderHeartbeatTimeoutNs(wideNs);
        try
        {
            final Field conductor = ConsensusModule.class.getDeclaredField("conductor");
            conductor.setAccessible(true);
            final Object found = conductor.get(consensusModule);
            final Field timeout = found.getClass().getDeclaredField("leaderHeartbeatTimeoutNs");
            timeout.setAccessible(true);
            timeout.setLong(found, wideNs);
            agent = found;
            agentTimeout = timeout;
        }
        catch (final ReflectiveOperationException | RuntimeException ex)
        {
            warn("no start-up grace for the consensus module's heartbeat timeout (" + ex +
                "); it starts with the configured one");
        }
    }

    /** Called once the member is first in step: the configured timing, at once or after the warm-up. */
    void inStep()
    {
        final boolean leads = ctx.clusterNodeRoleCounter().get() == Cluster.Role.LEADER.code();
        if (!leads)
        {
            restoreAgent();
        }
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
            restoreAgent();
            ctx.electionTimeoutNs(electionTimeoutNs);
            ctx.leaderHeartbeatTimeoutNs(heartbeatTimeoutNs);
            StartPhases.log(logPrefix, "configured election timing in force (heartbeat timeout " +
                TimeUnit.NANOSECONDS.toMillis(heartbeatTimeoutNs) + " ms, election timeout " +
                TimeUnit.NANOSECONDS.toMillis(electionTimeoutNs) + " ms)");
        }, "matchx-startup-grace");
        t.setDaemon(true);
        t.start();
    }

    private synchronized void restoreAgent()
    {
        if (agent != null)
        {
            try
            {
                agentTimeout.setLong(agent, heartbeatTimeoutNs);
            }
            catch (final IllegalAccessException ex)
            {
                warn("could not restore the consensus module's heartbeat timeout, failures are noticed late: " + ex);
            }
            agent = null;
        }
    }

    private void warn(final String what)
    {
        System.err.println(logPrefix + " WARN start: " + what);
        System.err.flush();
    }
}
