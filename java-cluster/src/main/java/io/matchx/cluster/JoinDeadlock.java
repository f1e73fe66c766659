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
 * {@link #SUSPECT_AFTER_MS}, this looks at the two threads' stacks once a second, and after
 * {@link #RESTART_AFTER_MS} of both waits without a break it logs both stacks and asks the
 * process to start again ({@link ShutdownLatch#restart}).
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

    JoinDeadlock(final int clusterId, final int memberId, final String logPrefix)
    {
        // Aeron's default agent names: ConsensusModule.Context.agentRoleName and
        // ClusteredServiceContainer.Context.serviceName
        this.consensusThread = "consensus-module-" + clusterId + "-" + memberId;
        this.servicePrefix = "clustered-service-" + clusterId + "-";
        this.logPrefix = logPrefix;
    }

    /** One sample: {@code unchangedMs} is how long the election state has not changed. */
    void check(final long nowMs, final long unchangedMs)
    {
        if (reported)
        {
            return;
        }
        if (unchangedMs < SUSPECT_AFTER_MS)
        {
            seenSinceMs = -1;
            return;
        }
        if (lastSampleMs >= 0 && nowMs - lastSampleMs < SAMPLE_EVERY_MS)
        {
            return;
        }
        lastSampleMs = nowMs;
        StackTraceElement[] consensus = null;
        StackTraceElement[] service = null;
        for (final Map.Entry<Thread, StackTraceElement[]> e : Thread.getAllStackTraces().entrySet())
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
                "(awaitServicesReady) and the service for that log's image (awaitImage); Aeron gives " +
                "neither a deadline. Restarting this process (snapshot and log replay).\n" +
                logPrefix + " consensus module: " + format(consensus) + "\n" +
                logPrefix + " service: " + format(service));
            System.err.flush();
            ShutdownLatch.restart("join deadlock of " + consensusThread);
        }
    }

    /** Both threads inside their deadline-free waits of a log join. */
    static boolean isDeadlock(final StackTraceElement[] consensus, final StackTraceElement[] service)
    {
        return has(consensus, "io.aeron.cluster.ConsensusModuleAgent", "awaitServicesReady") &&
            has(service, "io.aeron.cluster.service.ClusteredServiceAgent", "awaitImage") &&
            has(service, "io.aeron.cluster.service.ClusteredServiceAgent", "joinActiveLog");
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

    private static String format(final StackTraceElement[] stack)
    {
        final StringBuilder b = new StringBuilder();
        for (int i = 0; null != stack && i < Math.min(stack.length, 12); i++)
        {
            b.append(i == 0 ? "" : " <- ").append(stack[i].getClassName()).append('.')
                .append(stack[i].getMethodName()).append(':').append(stack[i].getLineNumber());
        }
        return b.toString();
    }
}
