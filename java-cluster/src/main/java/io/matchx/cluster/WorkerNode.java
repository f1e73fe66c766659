package io.matchx.cluster;

import io.aeron.archive.Archive;
import io.aeron.cluster.ClusterControl;
import io.aeron.cluster.ConsensusModule;
import io.aeron.cluster.service.ClusteredServiceContainer;
import io.aeron.driver.MediaDriver;
import io.aeron.driver.status.SystemCounterDescriptor;
import org.agrona.CloseHelper;
import org.agrona.ErrorHandler;
import org.agrona.concurrent.BackoffIdleStrategy;
import org.agrona.concurrent.status.AtomicCounter;

import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.TimeUnit;

/**
 * A worker: one media driver shared by members of several clusters (partitions), each member with
 * its own archive, consensus module and service container running {@link MatchService}.
 *
 * <p>A worker hosts at most one member per cluster: Aeron keys a consensus module's counters by
 * cluster id within a driver. Members are told apart by distinct cluster ids, directories, ports
 * and stream ids (see {@link MemberNode#newContexts}); their settings are the same properties as
 * for {@link MemberNode}, with {@code aeron.dir} equal to the worker's driver directory.
 *
 * <pre>
 *   WorkerNode worker = WorkerNode.launch(workerProperties);      // aeron.dir, term.length, idle.max.park.us
 *   MatchService service = MemberNode.newService(memberProperties, handler);
 *   worker.addMember(memberProperties, service);                   // once per partition
 *   ...
 *   worker.close();                                                // members, then the driver
 * </pre>
 */
public final class WorkerNode implements AutoCloseable
{
    private final String workerId;
    private final String aeronDir;
    private final MediaDriver.Context driverCtx;
    private final MediaDriver driver;
    private final List<Member> members = new ArrayList<>();
    private final SnapshotSchedule snapshotSchedule = new SnapshotSchedule();
    /** The driver wakes the hosted members' consensus modules and archives ({@link AgentWakeups}, woken parks). */
    private final PayloadWakeups payloads;
    private boolean closed;

    private WorkerNode(
        final String workerId, final MediaDriver.Context driverCtx, final MediaDriver driver, final PayloadWakeups payloads)
    {
        this.workerId = workerId;
        this.payloads = payloads;
        this.aeronDir = driver.aeronDirectoryName();
        this.driverCtx = driverCtx;
        this.driver = driver;
    }

    /**
     * Starts the worker's media driver (SHARED threading, backing-off idle).
     *
     * <p>Properties: {@code aeron.dir} (required), {@code term.length} (default 1 MiB, the driver's
     * default term for publications that do not name one), {@code idle.max.park.us} (default 1000),
     * {@code setup.repeat.ms} (default 10, {@link SetupRepeat}),
     * {@code worker.id} (for log lines).
     */
    public static WorkerNode launch(final Properties properties)
    {
        final String aeronDir = properties.getProperty("aeron.dir", "");
        if (aeronDir.isBlank())
        {
            throw new IllegalArgumentException("invalid worker setting: aeron.dir is required");
        }
        final int termLength = (int)MemberSettings.number(properties, "term.length", 1 << 20, "worker");
        if (termLength < 64 * 1024 || (termLength & (termLength - 1)) != 0)
        {
            throw new IllegalArgumentException("invalid worker setting: term.length must be a power of two >= 64k");
        }
        final long idleMaxParkUs = MemberSettings.number(properties, "idle.max.park.us", 1_000, "worker");
        if (idleMaxParkUs <= 0)
        {
            throw new IllegalArgumentException("invalid worker setting: idle.max.park.us must be > 0");
        }
        final long setupRepeatMs = MemberSettings.number(
            properties, "setup.repeat.ms", SetupRepeat.DEFAULT_MS, "worker");
        final String workerId = properties.getProperty("worker.id", "worker");
        final ErrorHandler errorHandler = (ex) -> log("[matchx worker " + workerId + "]", ex);
        final PayloadWakeups payloads = new PayloadWakeups();
        final MediaDriver.Context ctx = MemberNode.newDriverContext(
            aeronDir,
            termLength,
            setupRepeatMs,
            payloads.wrap(LightWorkBackoff.of(
                new BackoffIdleStrategy(10, 10, 1_000, TimeUnit.MICROSECONDS.toNanos(idleMaxParkUs)),
                (int)MemberSettings.number(properties, "idle.driver.light.work", LightWorkBackoff.DEFAULT_LIGHT_WORK, "worker"))),
            errorHandler);
        return new WorkerNode(workerId, ctx, MediaDriver.launch(ctx), payloads);
    }

    /**
     * Launches one member (archive, consensus module, service container) against this worker's driver.
     *
     * @param properties the member's settings, as for {@link MemberNode#launch}; {@code aeron.dir} must be
     *                   this worker's driver directory.
     * @param service    from {@link MemberNode#newService}, its buffers already mapped by Python.
     */
    public synchronized Member addMember(final Properties properties, final MatchService service)
    {
        if (closed)
        {
            throw new IllegalStateException("worker " + workerId + " is closed");
        }
        final MemberSettings s = MemberSettings.from(properties);
        if (!s.aeronDir.equals(aeronDir))
        {
            throw new IllegalArgumentException(
                "member of cluster " + s.clusterId + ": aeron.dir " + s.aeronDir + " is not the worker's " + aeronDir);
        }
        for (final Member m : members)
        {
            if (m.settings.clusterId == s.clusterId)
            {
                throw new IllegalArgumentException("worker " + workerId + " already hosts member " +
                    m.settings.memberId + " of cluster " + s.clusterId + "; a worker hosts one member per cluster");
            }
        }

        final String prefix = "[matchx worker " + workerId + " c" + s.clusterId + " m" + s.memberId + "]";
        final ErrorHandler errorHandler = (ex) -> log(prefix, ex);
        final MemberNode.Contexts ctx = MemberNode.newContexts(s, service, errorHandler);
        payloads.add(s.wakeups);
        Archive archive = null;
        ConsensusModule consensusModule = null;
        ClusteredServiceContainer container = null;
        ElectionTiming timing = null;
        try
        {
            // As ClusteredMediaDriver does for its own driver.
            archive = Archive.launch(ctx.archive
                .aeronDirectoryName(aeronDir)
                .mediaDriverAgentInvoker(driver.sharedAgentInvoker())
                .errorCounter(new AtomicCounter(driverCtx.countersValuesBuffer(), SystemCounterDescriptor.ERRORS.id())));
            final long started = System.nanoTime();
            timing = ElectionTiming.beforeLaunch(ctx.consensusModule, prefix,
                () -> MemberNode.newConsensusIdleStrategy(s, ctx.consensusModule));
            consensusModule = ConsensusModule.launch(ctx.consensusModule);
            timing.afterLaunch(consensusModule);
            StartPhases.log(prefix, "archive (recordings recovered) and consensus module launched in " +
                TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - started) + " ms");
            MemberNode.watchFirstElection(prefix, timing, ctx, service);
            container = ClusteredServiceContainer.launch(ctx.container);
        }
        catch (final RuntimeException ex)
        {
            CloseHelper.quietCloseAll(timing, container, consensusModule, archive);
            payloads.remove(s.wakeups);
            throw ex;
        }
        final Member member = new Member(s, timing, archive, consensusModule, container, service);
        members.add(member);
        member.snapshotCheck = snapshotSchedule.add(s, service, member::takeSnapshot);
        return member;
    }

    /**
     * Stops and forgets the member of cluster {@code clusterId} (its partition was removed from
     * this worker): its snapshot checks end, then its container, consensus module and archive
     * close. Its directory stays on disk. Returns false when the worker hosts no such member.
     */
    public synchronized boolean removeMember(final int clusterId)
    {
        for (int i = 0; i < members.size(); i++)
        {
            final Member m = members.get(i);
            if (m.settings.clusterId == clusterId)
            {
                members.remove(i);
                if (null != m.snapshotCheck)
                {
                    m.snapshotCheck.cancel(false);
                }
                CloseHelper.quietClose(m);
                payloads.remove(m.settings.wakeups);
                return true;
            }
        }
        return false;
    }

    public String aeronDirectoryName()
    {
        return aeronDir;
    }

    public synchronized List<Member> members()
    {
        return new ArrayList<>(members);
    }

    /** Closes every member (last added first), then the driver, which deletes its directory. */
    public synchronized void close()
    {
        if (closed)
        {
            return;
        }
        closed = true;
        snapshotSchedule.close();
        // the members that lead drain at once, then each ends its log (Handover)
        final List<Handover.Leader> leaders = new ArrayList<>();
        for (final Member m : members)
        {
            leaders.add(new Handover.Leader(
                "[matchx worker " + workerId + " c" + m.settings.clusterId + " m" + m.settings.memberId + "]",
                m.service, m.consensusModule));
        }
        if (Handover.endLeadership(leaders))
        {
            Handover.linger();
        }
        for (int i = members.size() - 1; i >= 0; i--)
        {
            CloseHelper.quietClose(members.get(i));
        }
        CloseHelper.close(driver);
    }

    private static void log(final String prefix, final Throwable ex)
    {
        final String level = ex instanceof io.aeron.cluster.client.ClusterEvent ? "WARN" : "ERROR";
        System.err.println(prefix + " " + level + " " + ex);
        System.err.flush();
    }

    /** One member hosted by a worker. */
    public static final class Member implements AutoCloseable
    {
        private final MemberSettings settings;
        private final ElectionTiming timing;
        private final Archive archive;
        private final ConsensusModule consensusModule;
        private final ClusteredServiceContainer container;
        private final MatchService service;
        private java.util.concurrent.Future<?> snapshotCheck;
        /** Guarded by this: the snapshot check's thread reads the client's counters, close unmaps them. */
        private boolean closed;

        Member(
            final MemberSettings settings,
            final ElectionTiming timing,
            final Archive archive,
            final ConsensusModule consensusModule,
            final ClusteredServiceContainer container,
            final MatchService service)
        {
            this.settings = settings;
            this.timing = timing;
            this.archive = archive;
            this.consensusModule = consensusModule;
            this.container = container;
            this.service = service;
        }

        public int clusterId()
        {
            return settings.clusterId;
        }

        public int memberId()
        {
            return settings.memberId;
        }

        public MatchService service()
        {
            return service;
        }

        /** As {@link MemberNode#takeSnapshot()}: only the leader of the cluster acts on it. */
        public synchronized boolean takeSnapshot()
        {
            if (closed || service.role() != 2)
            {
                return false;
            }
            final AtomicCounter toggle = ClusterControl.findControlToggle(
                consensusModule.context().aeron().countersReader(), settings.clusterId);
            return null != toggle && ClusterControl.ToggleState.SNAPSHOT.toggle(toggle);
        }

        /** Our watchers of its counters first (WatchedCounter), then Aeron's parts. */
        public synchronized void close()
        {
            closed = true;
            CloseHelper.closeAll(timing, container, consensusModule, archive);
        }
    }
}
