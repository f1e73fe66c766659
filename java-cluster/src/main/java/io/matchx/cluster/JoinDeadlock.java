package io.matchx.cluster;

import io.aeron.cluster.client.ClusterException;
import org.agrona.ErrorHandler;

import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.TimeUnit;

/**
 * Recognises a member whose consensus module and service wait for each other forever when the
 * service joins a new log, and ends the process so that it starts again.
 *
 * <p>Why: in Aeron 1.51 a follower that joins a leader's log calls {@code
 * ConsensusModuleAgent.awaitServicesReady}, which loops without a deadline until the service
 * acknowledges; the service ({@code ClusteredServiceAgent.joinActiveLog}) first waits, also
 * without a deadline, for the log's image on its own subscription ({@code awaitImage}). Seen on
 * this 2-core machine at load 20-40 during failovers (bench/reports/stuck_election.md): the
 * consensus module had the image, the service never got it, and the member stayed in
 * FOLLOWER_LOG_AWAIT for minutes, neither voting nor following, so the next kill of a leader
 * left its partition without a quorum. Nothing inside the process can give the service the image
 * or the consensus module a deadline; a fresh start (snapshot and log replay) joins normally.
 *
 * <p>How: {@link ElectionTiming} samples the election state; once it has not changed for
 * {@link #SUSPECT_AFTER_MS}, this logs every thread's stack once and then looks at the two
 * threads' stacks once a second; after {@link #RESTART_AFTER_MS} of the consensus module inside
 * {@code awaitServicesReady} without a break ({@link #isDeadlock}) it logs both stacks and asks
 * the process to start again ({@link ShutdownLatch#restart}).
 */
final class JoinDeadlock
{
    /** The election state unchanged this long before the stacks are looked at. */
    static final long SUSPECT_AFTER_MS = 5_000;
    /** Both waits seen without a break this long before the process is restarted. */
    static final long RESTART_AFTER_MS = 10_000;
    /**
     * What Aeron's service throws when it will not join a new log (ClusteredServiceAgent.joinActiveLog):
     * it then never acknowledges the join, so its consensus module waits in awaitServicesReady for good.
     */
    static final String JOIN_REFUSAL = "Cluster log must be contiguous";
    /** How long a refusal stays a reason to restart while the consensus module is not (yet) seen waiting. */
    static final long REFUSAL_VALID_MS = 30_000;
    static final long REFUSAL_SAMPLE_EVERY_MS = 50;

    /** Members whose service refused a log join, by {@link #key}: when (ms, the nanoTime clock). */
    private static final ConcurrentHashMap<Long, Long> REFUSED_AT_MS = new ConcurrentHashMap<>();

    private final long key;
    private long lastRefusalSampleMs = -1;
    static final long SAMPLE_EVERY_MS = 1_000;

    private final String consensusThread;
    private final String servicePrefix;
    private final String logPrefix;
    private long seenSinceMs = -1;
    private long lastSampleMs = -1;
    private boolean reported;
    private boolean dumped;

    JoinDeadlock(final int clusterId, final int memberId, final String logPrefix)
    {
        // Aeron's default agent names: ConsensusModule.Context.agentRoleName and
        // ClusteredServiceContainer.Context.serviceName
        this.key = key(clusterId, memberId);
        this.consensusThread = "consensus-module-" + clusterId + "-" + memberId;
        this.servicePrefix = "clustered-service-" + clusterId + "-";
        this.logPrefix = logPrefix;
    }

    static long key(final int clusterId, final int memberId)
    {
        return ((long)clusterId << 32) | (memberId & 0xFFFF_FFFFL);
    }

    static boolean isJoinRefusal(final Throwable ex)
    {
        return ex instanceof ClusterException && null != ex.getMessage() && ex.getMessage().contains(JOIN_REFUSAL);
    }

    /**
     * The member's error handler, noting its service's refusals to join a log for {@link #check}: without
     * this the member waited {@link #SUSPECT_AFTER_MS} + {@link #RESTART_AFTER_MS} before restarting, and
     * when it was the new leader its partition had no leader for those ~15 s (seen in a quiet run of
     * bench/auth_revocation.py, 7 Dec 15:42 UTC: "expectedPosition=1818304 joinPosition=1818400").
     */
    static ErrorHandler noticingJoinRefusals(final int clusterId, final int memberId, final ErrorHandler delegate)
    {
        final long key = key(clusterId, memberId);
        return (ex) ->
        {
            if (isJoinRefusal(ex))
            {
                REFUSED_AT_MS.put(key, TimeUnit.NANOSECONDS.toMillis(System.nanoTime()));
            }
            delegate.onError(ex);
        };
    }

    /**
     * Whether to restart now for a refused join: the service refused within {@link #REFUSAL_VALID_MS}
     * and the consensus module is inside the wait that only the refused acknowledgement would end.
     */
    static boolean refusedJoinDeadlock(final Long refusedAtMs, final long nowMs, final StackTraceElement[] consensus)
    {
        return null != refusedAtMs && nowMs - refusedAtMs <= REFUSAL_VALID_MS &&
            has(consensus, "io.aeron.cluster.ConsensusModuleAgent", "awaitServicesReady");
    }

    private boolean restartIfJoinRefused(final long nowMs)
    {
        final Long refusedAtMs = REFUSED_AT_MS.get(key);
        if (null == refusedAtMs || (lastRefusalSampleMs >= 0 && nowMs - lastRefusalSampleMs < REFUSAL_SAMPLE_EVERY_MS))
        {
            return false;
        }
        lastRefusalSampleMs = nowMs;
        if (nowMs - refusedAtMs > REFUSAL_VALID_MS)
        {
            REFUSED_AT_MS.remove(key, refusedAtMs);
            return false;
        }
        StackTraceElement[] consensus = null;
        for (final Map.Entry<Thread, StackTraceElement[]> e : Thread.getAllStackTraces().entrySet())
        {
            if (e.getKey().getName().equals(consensusThread))
            {
                consensus = e.getValue();
            }
        }
        if (!refusedJoinDeadlock(refusedAtMs, nowMs, consensus))
        {
            return false;
        }
        reported = true;
        REFUSED_AT_MS.remove(key);
        System.err.println(logPrefix + " ERROR join refused: the service would not join the new log (" +
            JOIN_REFUSAL + ", " + (nowMs - refusedAtMs) + " ms ago) and the consensus module waits for its " +
            "acknowledgement without a deadline. Restarting this process (snapshot and log replay).\n" +
            logPrefix + " consensus module: " + format(consensus, 12));
        System.err.flush();
        ShutdownLatch.restart("join refused by the service of " + consensusThread);
        return true;
    }

    /**
     * One sample: {@code unchangedMs} is how long the election state {@code state} has not changed.
     */
    void check(final long nowMs, final long unchangedMs, final String state)
    {
        if (reported || restartIfJoinRefused(nowMs))
        {
            return;
        }
        if (unchangedMs < SUSPECT_AFTER_MS)
        {
            seenSinceMs = -1;
            dumped = false;
            return;
        }
        if (lastSampleMs >= 0 && nowMs - lastSampleMs < SAMPLE_EVERY_MS)
        {
            return;
        }
        lastSampleMs = nowMs;
        StackTraceElement[] consensus = null;
        StackTraceElement[] service = null;
        final Map<Thread, StackTraceElement[]> stacks = Thread.getAllStackTraces();
        for (final Map.Entry<Thread, StackTraceElement[]> e : stacks.entrySet())
        {
            final String name = e.getKey().getName();
            if (name.equals(consensusThread))
            {
                consensus = e.getValue();
            }
            else if (name.startsWith(servicePrefix))
            {
                service = e.getValue();
            }
        }
        // INIT lasts as long as a start's snapshot load, which may take seconds: not a stall
        if (!dumped && !"INIT".equals(state))
        {
            // Once per stall, whatever its cause: a member stuck in an election for seconds is a
            // defect to be diagnosed from its log, and the log is often all a failed run leaves.
            dumped = true;
            System.err.println(logPrefix + " WARN election state " + state + " unchanged for " +
                unchangedMs + " ms; threads now:\n" + formatThreads(stacks));
            System.err.flush();
        }
        if (!isDeadlock(consensus, service))
        {
            seenSinceMs = -1;
            return;
        }
        if (seenSinceMs < 0)
        {
            seenSinceMs = nowMs;
        }
        if (nowMs - seenSinceMs >= RESTART_AFTER_MS)
        {
            reported = true;
            System.err.println(logPrefix + " ERROR join deadlock: for " + (nowMs - seenSinceMs) +
                " ms the consensus module has waited for its service to join the new log " +
                "(awaitServicesReady) and the service has not acknowledged; Aeron gives the wait no " +
                "deadline. Restarting this process (snapshot and log replay).\n" +
                logPrefix + " consensus module: " + format(consensus, 12) + "\n" +
                logPrefix + " service: " + format(service, 12));
            System.err.flush();
            ShutdownLatch.restart("join deadlock of " + consensusThread);
        }
    }

    /**
     * The consensus module inside its deadline-free wait for its service to join a log. The
     * service's acknowledgement normally comes within milliseconds (the service joins the log's
     * image and acks); seconds of it mean the service will not ack, whatever it is doing instead:
     * waiting for an image that never reaches its subscription (the case of
     * bench/reports/stuck_election.md) or anything else. Seen once in a fresh-clone test run: a
     * restarted member's consensus module stayed in FOLLOWER_CATCHUP_AWAIT for over 60 s, which
     * only this wait can do (every other wait of that step has a deadline), with no join
     * deadlock reported, so its service was not in {@code awaitImage}. Either way the member can
     * neither vote nor follow until it starts again.
     */
    static boolean isDeadlock(final StackTraceElement[] consensus, final StackTraceElement[] service)
    {
        return has(consensus, "io.aeron.cluster.ConsensusModuleAgent", "awaitServicesReady") &&
            !has(service, "io.aeron.cluster.service.ClusteredServiceAgent", "loadSnapshot");
    }

    private static boolean has(final StackTraceElement[] stack, final String cls, final String method)
    {
        if (null == stack)
        {
            return false;
        }
        for (final StackTraceElement f : stack)
        {
            if (cls.equals(f.getClassName()) && method.equals(f.getMethodName()))
            {
                return true;
            }
        }
        return false;
    }

    private static String formatThreads(final Map<Thread, StackTraceElement[]> stacks)
    {
        final StringBuilder b = new StringBuilder();
        for (final Map.Entry<Thread, StackTraceElement[]> e : stacks.entrySet())
        {
            final Thread t = e.getKey();
            if (e.getValue().length == 0)
            {
                continue;
            }
            b.append("  \"").append(t.getName()).append("\" ").append(t.getState()).append(": ")
                .append(format(e.getValue(), 16)).append('\n');
        }
        return b.toString();
    }

    private static String format(final StackTraceElement[] stack, final int depth)
    {
        final StringBuilder b = new StringBuilder();
        for (int i = 0; null != stack && i < Math.min(stack.length, depth); i++)
        {
            b.append(i == 0 ? "" : " <- ").append(stack[i].getClassName()).append('.')
                .append(stack[i].getMethodName()).append(':').append(stack[i].getLineNumber());
        }
        return b.toString();
    }
}
