package io.matchx.cluster;

import java.util.Map;

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
        this.consensusThread = "consensus-module-" + clusterId + "-" + memberId;
        this.servicePrefix = "clustered-service-" + clusterId + "-";
        this.logPrefix = logPrefix;
    }

    /**
     * One sample: {@code unchangedMs} is how long the election state {@code state} has not changed.
     */
    void check(final long nowMs, final long unchangedMs, final String state)
    {
        if (reported)
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
