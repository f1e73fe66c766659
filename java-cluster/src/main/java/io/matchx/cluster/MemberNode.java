package io.matchx.cluster;

import io.aeron.Counter;
import io.aeron.archive.Archive;
import io.aeron.archive.ArchiveThreadingMode;
import io.aeron.archive.checksum.Checksums;
import io.aeron.archive.client.AeronArchive;
import io.aeron.cluster.ClusterControl;
import io.aeron.cluster.ClusteredMediaDriver;
import io.aeron.cluster.CompactClusteredMediaDriver;
import io.aeron.cluster.RecordingLog;
import io.aeron.cluster.ConsensusModule;
import io.aeron.cluster.ElectionState;
import io.aeron.cluster.service.ClusteredService;
import io.aeron.cluster.service.ClusteredServiceContainer;
import io.aeron.driver.ExecutorWakeup;
import io.aeron.driver.MediaDriver;
import io.aeron.driver.ThreadingMode;
import org.agrona.CloseHelper;
import org.agrona.ErrorHandler;
import org.agrona.concurrent.BackoffIdleStrategy;
import org.agrona.concurrent.IdleStrategy;
import org.agrona.concurrent.NoOpLock;
import org.agrona.concurrent.status.AtomicCounter;

import java.io.File;
import java.nio.file.Path;
import java.util.Properties;
import java.util.concurrent.TimeUnit;

/**
 * Launches one cluster member: a media driver, archive and consensus module (one
 * {@link ClusteredMediaDriver}) plus a service container running {@link MatchService}.
 *
 * <p>Settings come as string properties so Python can build them from its own frozen config;
 * {@link MemberSettings} validates all of them before anything starts. Threading is SHARED and
 * idling backs off to sleeping, because three members share two cores on a developer box.
 */
public final class MemberNode implements AutoCloseable
{
    static final String LOG_PREFIX = "[matchx member]";
    private final MemberSettings settings;
    private final ClusteredMediaDriver driver;
    private final ClusteredServiceContainer container;
    private final MatchService service;
    private final ElectionTiming timing;
    private final SnapshotSchedule snapshotSchedule = new SnapshotSchedule();
    /** Guarded by this: the snapshot check's thread reads the client's counters, close unmaps them. */
    private boolean closed;

    private MemberNode(
        final MemberSettings settings,
        final ClusteredMediaDriver driver,
        final ClusteredServiceContainer container,
        final MatchService service,
        final ElectionTiming timing)
    {
        this.settings = settings;
        this.driver = driver;
        this.container = container;
        this.service = service;
        this.timing = timing;
    }

    /** A service built before launch so that Python can map its buffers first. */
    public static MatchService newService(final Properties properties, final ServiceHandler handler)
    {
        final MemberSettings settings = MemberSettings.from(properties);
        return new MatchService(
            settings.memberId,
            handler,
            settings.bufferCapacity,
            new StatusFile(Path.of(settings.baseDir, "status.json")),
            MemberNode::haltOnFatal);
    }

    public static MemberNode launch(final Properties properties, final MatchService service)
    {
        final MemberSettings s = MemberSettings.from(properties);
        final ErrorHandler errorHandler = MemberNode::logError;
        final MediaDriver.Context driverCtx = newMemberDriverContext(s, errorHandler);
        final Contexts ctx = newContexts(s, service, errorHandler);

        ClusteredMediaDriver driver = null;
        ClusteredServiceContainer container = null;
        ElectionTiming timing = null;
        try
        {
            final long started = System.nanoTime();
            timing = ElectionTiming.beforeLaunch(ctx.consensusModule, LOG_PREFIX,
                () -> newConsensusIdleStrategy(s, ctx.consensusModule));
            driver = launchDriver(s, driverCtx, ctx, errorHandler);
            timing.afterLaunch(driver.consensusModule());
            StartPhases.log(LOG_PREFIX, "media driver, archive (recordings recovered) and consensus module launched in " +
                TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - started) + " ms");
            watchFirstElection(LOG_PREFIX, timing, ctx, service);
            container = ClusteredServiceContainer.launch(ctx.container);
            final MemberNode node = new MemberNode(s, driver, container, service, timing);
            node.snapshotSchedule.add(s, service, node::takeSnapshot);
            return node;
        }
        catch (final RuntimeException ex)
        {
            CloseHelper.closeAll(timing, container, driver);
            throw ex;
        }
    }

    /**
     * A member around any {@link ClusteredService}, with the contexts, ports and idle strategies a
     * matchx member gets: bench/latency.py runs a trivial echo service this way as the floor that
     * says what Aeron itself costs on the machine ({@code io.matchx.cluster.bench.EchoFloor}).
     */
    public static AutoCloseable launchBare(final Properties properties, final ClusteredService service)
    {
        final MemberSettings s = MemberSettings.from(properties);
        final ErrorHandler errorHandler = MemberNode::logError;
        final MediaDriver.Context driverCtx = newMemberDriverContext(s, errorHandler);
        final Contexts ctx = newContexts(s, service, errorHandler);
        ClusteredMediaDriver driver = null;
        try
        {
            driver = launchDriver(s, driverCtx, ctx, errorHandler);
            final ClusteredServiceContainer container = ClusteredServiceContainer.launch(ctx.container);
            final ClusteredMediaDriver launched = driver;
            return () -> CloseHelper.closeAll(container, launched);
        }
        catch (final RuntimeException ex)
        {
            CloseHelper.quietClose(driver);
            throw ex;
        }
    }

    /** The contexts of one member's archive, consensus module and service container. */
    static final class Contexts
    {
        final Archive.Context archive;
        final ConsensusModule.Context consensusModule;
        final ClusteredServiceContainer.Context container;

        Contexts(
            final Archive.Context archive,
            final ConsensusModule.Context consensusModule,
            final ClusteredServiceContainer.Context container)
        {
            this.archive = archive;
            this.consensusModule = consensusModule;
            this.container = container;
        }
    }

    /**
     * Logs the first election's steps and, once it has closed, tells the service it is in step and who
     * leads (its consensus module asked: the service may not have seen the term begin).
     */
    static void watchFirstElection(
        final String logPrefix, final ElectionTiming timing, final Contexts ctx, final MatchService service)
    {
        final File clusterDir = ctx.consensusModule.clusterDir();
        StartPhases.watchElection(logPrefix, timing.electionState(),
            () -> service.inStep(MemberMetrics.leaderMemberId(clusterDir, 1_000)));
    }

    /**
     * The driver's housekeeping tick (Aeron's default 1 s), on which it changes the states of images
     * and closes what is no longer used. An election's INIT closes the follower's subscription to the
     * old leader's log and waits until the driver has released its socket (Election.init,
     * awaitLocalSocketsClosed: the thread stacks of a 2x3 system's failovers showed the consensus
     * module there). At Aeron's defaults 11 of 64 INIT steps of the failover rounds of
     * bench/auth_revocation.py took 1.0-1.9 s; with these two settings none of 103 took over 0.5 s
     * (bench/reports/auth_revocation_driver_timer.md, docs/operations.md "Settings").
     */
    static final long DRIVER_TIMER_INTERVAL_MS = 20;

    /**
     * A receiver's longest interval between status messages (Aeron's default 200 ms); a removed image
     * drains for five of them before it lingers and lets its endpoint close (PublicationImage,
     * SM_EOS_MULTIPLE). Not lower: each idle image then sends a status message every interval, and
     * at 20 ms an idle member used ~1 point more of a core (17.7 against 16.6 %,
     * bench/reports/idle_cpu_status_message_20ms.md).
     */
    static final long STATUS_MESSAGE_TIMEOUT_MS = 50;

    /** The driver's async executor's longest sleep: the driver wakes it when a task waits ({@link ExecutorWakeup}). */
    static final long EXECUTOR_PARK_MS = 10;

    /**
     * A media driver for one member, or for all members a worker hosts: SHARED threading, backing-off
     * idle, sparse term files, its directory deleted on start and on shutdown (it is scratch), and
     * new publications' SETUP repeated every {@code setupRepeatMs} ({@link SetupRepeat}).
     */
    static MediaDriver.Context newDriverContext(
        final String aeronDir,
        final int termLength,
        final long setupRepeatMs,
        final IdleStrategy idle,
        final ErrorHandler errorHandler)
    {
        SetupRepeat.apply(setupRepeatMs);
        final MediaDriver.Context ctx = new MediaDriver.Context();
        return ctx
            .aeronDirectoryName(aeronDir)
            .dirDeleteOnStart(true)
            .dirDeleteOnShutdown(true)
            .threadingMode(ThreadingMode.SHARED)
            .sharedIdleStrategy(ExecutorWakeup.install(ctx, idle, TimeUnit.MILLISECONDS.toNanos(EXECUTOR_PARK_MS)))
            .termBufferSparseFile(true)
            .timerIntervalNs(TimeUnit.MILLISECONDS.toNanos(DRIVER_TIMER_INTERVAL_MS))
            .statusMessageTimeoutNs(TimeUnit.MILLISECONDS.toNanos(STATUS_MESSAGE_TIMEOUT_MS))
            .publicationTermBufferLength(termLength)
            .ipcTermBufferLength(termLength)
            .errorHandler(errorHandler);
    }

    /** The driver context of a member process (not a worker's). */
    static MediaDriver.Context newMemberDriverContext(final MemberSettings s, final ErrorHandler errorHandler)
    {
        return newDriverContext(
            s.aeronDir, s.termLength, s.setupRepeatMs, newDriverIdleStrategy(s), errorHandler);
    }

    /** A member process's driver: it wakes its member's agents ({@code agent.wakeups}, {@link PayloadWakeups}). */
    static IdleStrategy newDriverIdleStrategy(final MemberSettings s)
    {
        final IdleStrategy idle = newIdleStrategy(s, AgentWakeups.Agent.DRIVER);
        if (null == s.wakeups || !s.wakeups.wokenParks())
        {
            return idle;
        }
        final PayloadWakeups payloads = new PayloadWakeups();
        payloads.add(s.wakeups);
        return payloads.wrap(idle);
    }

    /**
     * The driver, archive and consensus module of a member process: with {@code threading=compact}
     * the driver and the archive share one agent thread ({@link CompactClusteredMediaDriver}), one
     * thread fewer competing for the cores; otherwise each has its own (SHARED modes).
     */
    static ClusteredMediaDriver launchDriver(
        final MemberSettings s, final MediaDriver.Context driverCtx, final Contexts ctx, final ErrorHandler errorHandler)
    {
        if (MemberSettings.THREADING_COMPACT.equals(s.threading))
        {
            // the archive's agent runs on the driver's thread: woken as the driver (it wakes nobody)
            return CompactClusteredMediaDriver.launch(driverCtx, ctx.archive, ctx.consensusModule,
                newDriverIdleStrategy(s), errorHandler);
        }
        return ClusteredMediaDriver.launch(driverCtx, ctx.archive, ctx.consensusModule);
    }

    /**
     * The archive, consensus module and service container contexts of one member.
     *
     * <p>Every stream id these components use on a shared channel is Aeron's default plus
     * {@link MemberSettings#streamIdOffset} ({@code cluster.id * 1000}); cluster 0 keeps the defaults.
     * Members of different clusters in one media driver (a worker) would otherwise meet on the same
     * IPC streams: the service control channel (service 104, consensus module 105), snapshots (106,
     * 107), replay (103), the archive's local control requests (10) and responses (20). The log (100)
     * and consensus (108) streams are UDP on per-member ports but are offset too, consistently for
     * all members of a cluster. The archive's UDP control stream must equal its local one: a follower
     * replicates from the leader's archive with its own local {@code controlRequestStreamId}. Ingress
     * stays on Aeron's default stream (101): clients do not know cluster ids, and ingress is UDP on
     * the member's own port.
     */
    static Contexts newContexts(final MemberSettings s, final MatchService service, final ErrorHandler errorHandler)
    {
        final Contexts ctx = newContexts(s, (ClusteredService)service, errorHandler);
        final CredentialsVerifier verifier = service.credentialsVerifier();
        if (null != verifier)
        {
            ctx.consensusModule.authenticatorSupplier(() -> new TokenAuthenticator(verifier));
        }
        // after a leader is lost the lowest surviving id nominates first (NominationOrder): no split vote
        ctx.consensusModule.random(new NominationOrder(
            s.memberId, s.clusterMembers.split("\\|").length, service::leaderMemberId));
        service.snapshotSource(describeLatestSnapshot(ctx.consensusModule.clusterDir(), ctx.archive.archiveDir()));
        service.snapshotTakenAtMs(latestSnapshotTimestampMs(ctx.consensusModule.clusterDir()));
        return ctx;
    }

    /** As above for any {@link ClusteredService}: no authenticator, no snapshot description. */
    static Contexts newContexts(
        final MemberSettings s, final ClusteredService service, final ErrorHandler memberErrorHandler)
    {
        final ErrorHandler errorHandler = JoinDeadlock.noticingJoinRefusals(s.clusterId, s.memberId, memberErrorHandler);
        final int off = s.streamIdOffset;
        final File base = new File(s.baseDir);
        final File clusterDir = new File(base, "cluster");
        final File archiveDir = new File(base, "archive");
        final int archiveControlStreamId = AeronArchive.Configuration.CONTROL_STREAM_ID_DEFAULT + off;
        final int archiveResponseStreamId = AeronArchive.Configuration.CONTROL_RESPONSE_STREAM_ID_DEFAULT + off;

        final AeronArchive.Context replicationArchiveCtx = new AeronArchive.Context()
            .controlResponseChannel("aeron:udp?endpoint=" + s.host + ":0")
            .controlResponseStreamId(archiveResponseStreamId);

        final Archive.Context archiveCtx = new Archive.Context()
            .aeronDirectoryName(s.aeronDir)
            .archiveDir(archiveDir)
            .controlChannel("aeron:udp?endpoint=" + s.host + ":" + s.archivePort)
            .controlStreamId(archiveControlStreamId)
            .localControlChannel("aeron:ipc?term-length=64k")
            .localControlStreamId(archiveControlStreamId)
            .recordingEventsStreamId(AeronArchive.Configuration.RECORDING_EVENTS_STREAM_ID_DEFAULT + off)
            .archiveClientContext(replicationArchiveCtx)
            .replicationChannel("aeron:udp?endpoint=" + s.host + ":0")
            .recordingEventsEnabled(false)
            .threadingMode(ArchiveThreadingMode.SHARED)
            .idleStrategySupplier(() -> newIdleStrategy(s, AgentWakeups.Agent.ARCHIVE))
            .segmentFileLength(s.segmentLength)
            // After a kill the archive checks the last fragment of each recording: if it crosses a
            // page boundary and its part past the boundary is zeros (binary commands end in zeros)
            // it cannot tell a whole fragment from a torn write without a checksum, and refuses to
            // start ("Found potentially incomplete last fragment ... Run ArchiveTool verify"): the
            // member stayed down. With a checksum a whole fragment passes; a really torn one still
            // stops the member (docs/operations.md, "Snapshots and recovery").
            .recordChecksum(Checksums.crc32c())
            .errorHandler(errorHandler);

        final AeronArchive.Context localArchiveCtx = new AeronArchive.Context()
            .lock(NoOpLock.INSTANCE)
            .controlRequestChannel(archiveCtx.localControlChannel())
            .controlRequestStreamId(archiveCtx.localControlStreamId())
            .controlResponseChannel(archiveCtx.localControlChannel())
            .controlResponseStreamId(archiveResponseStreamId)
            .aeronDirectoryName(s.aeronDir);

        final ConsensusModule.Context cmCtx = new ConsensusModule.Context()
            .clusterId(s.clusterId)
            .clusterMemberId(s.memberId)
            .clusterMembers(s.clusterMembers)
            .clusterDir(clusterDir)
            .aeronDirectoryName(s.aeronDir)
            .archiveContext(localArchiveCtx.clone())
            .ingressChannel("aeron:udp?term-length=" + s.ingressTermLength)
            .logChannel("aeron:udp?term-length=" + s.termLength)
            .logStreamId(ConsensusModule.Configuration.LOG_STREAM_ID_DEFAULT + off)
            .consensusStreamId(ConsensusModule.Configuration.CONSENSUS_STREAM_ID_DEFAULT + off)
            .snapshotStreamId(ConsensusModule.Configuration.SNAPSHOT_STREAM_ID_DEFAULT + off)
            .replayStreamId(ClusteredServiceContainer.Configuration.REPLAY_STREAM_ID_DEFAULT + off)
            .serviceStreamId(ClusteredServiceContainer.Configuration.SERVICE_STREAM_ID_DEFAULT + off)
            .consensusModuleStreamId(ClusteredServiceContainer.Configuration.CONSENSUS_MODULE_STREAM_ID_DEFAULT + off)
            .replicationChannel("aeron:udp?endpoint=" + s.host + ":0")
            .leaderHeartbeatIntervalNs(TimeUnit.MILLISECONDS.toNanos(s.heartbeatIntervalMs))
            .leaderHeartbeatTimeoutNs(TimeUnit.MILLISECONDS.toNanos(s.heartbeatTimeoutMs))
            .electionTimeoutNs(TimeUnit.MILLISECONDS.toNanos(s.electionTimeoutMs))
            .electionStatusIntervalNs(TimeUnit.MILLISECONDS.toNanos(s.electionStatusIntervalMs))
            .startupCanvassTimeoutNs(TimeUnit.MILLISECONDS.toNanos(s.startupCanvassTimeoutMs))
            .sessionTimeoutNs(TimeUnit.MILLISECONDS.toNanos(s.sessionTimeoutMs))
            .maxConcurrentSessions(s.maxConcurrentSessions)
            .errorHandler(errorHandler);
        cmCtx.idleStrategySupplier(() -> newConsensusIdleStrategy(s, cmCtx));
        if (LatencyTrace.ENABLED)
        {
            cmCtx.clusterClock(LatencyTrace.ingressClock()); // bench/rtt_breakdown.py only
        }

        final ClusteredServiceContainer.Context serviceCtx = new ClusteredServiceContainer.Context()
            .clusterId(s.clusterId)
            .aeronDirectoryName(s.aeronDir)
            .archiveContext(localArchiveCtx.clone())
            .clusterDir(clusterDir)
            .clusteredService(service)
            .serviceId(0)
            .replayStreamId(ClusteredServiceContainer.Configuration.REPLAY_STREAM_ID_DEFAULT + off)
            .serviceStreamId(ClusteredServiceContainer.Configuration.SERVICE_STREAM_ID_DEFAULT + off)
            .consensusModuleStreamId(ClusteredServiceContainer.Configuration.CONSENSUS_MODULE_STREAM_ID_DEFAULT + off)
            .snapshotStreamId(ClusteredServiceContainer.Configuration.SNAPSHOT_STREAM_ID_DEFAULT + off)
            .snapshotChannel(snapshotChannel(s))
            // the service's replay channel carries only the snapshot it loads at start (Aeron's
            // ClusteredServiceAgent.loadSnapshot): the same term length lets the archive replay it
            // without waiting on the service every half megabyte
            .replayChannel(snapshotReplayChannel(s))
            .idleStrategySupplier(() -> newIdleStrategy(s, AgentWakeups.Agent.SERVICE))
            .errorHandler(errorHandler);

        return new Contexts(archiveCtx, cmCtx, serviceCtx);
    }

    /**
     * The service's snapshot channel: Aeron's default IPC channel with a term of its own
     * ({@code snapshot.term.length}, sparse: only the pages written are used) and frame size.
     */
    static String snapshotChannel(final MemberSettings s)
    {
        return ClusteredServiceContainer.Configuration.SNAPSHOT_CHANNEL_DEFAULT + "|" + snapshotChannelParams(s);
    }

    /** The channel the archive replays the snapshot to at start: as {@link #snapshotChannel}. */
    static String snapshotReplayChannel(final MemberSettings s)
    {
        return ClusteredServiceContainer.Configuration.REPLAY_CHANNEL_DEFAULT + "?" + snapshotChannelParams(s);
    }

    private static String snapshotChannelParams(final MemberSettings s)
    {
        return "sparse=true|term-length=" + s.snapshotTermLength + (s.snapshotMtu > 0 ? "|mtu=" + s.snapshotMtu : "");
    }

    /**
     * Where the snapshot schedule's clock starts for a restarting member (cluster time, epoch ms):
     * when the snapshot it will load was taken, or, when the cluster never took one, when its log
     * began (the first term), because all of that log is what a restart replays; 0 for a member
     * without a recording log (a fresh start: the clock starts now).
     */
    static long latestSnapshotTimestampMs(final File clusterDir)
    {
        if (!new File(clusterDir, RecordingLog.RECORDING_LOG_FILE_NAME).exists())
        {
            return 0;
        }
        try (RecordingLog log = new RecordingLog(clusterDir, false))
        {
            final RecordingLog.Entry entry = log.getLatestSnapshot(0);
            if (null != entry)
            {
                return entry.timestamp;
            }
            for (final RecordingLog.Entry e : log.entries())
            {
                if (RecordingLog.ENTRY_TYPE_TERM == e.type && e.isValid)
                {
                    return e.timestamp;
                }
            }
            return 0;
        }
        catch (final RuntimeException ex)
        {
            return 0;
        }
    }

    /** Names the snapshot recording a restarting member will load, and its files. */
    static String describeLatestSnapshot(final File clusterDir, final File archiveDir)
    {
        if (!new File(clusterDir, RecordingLog.RECORDING_LOG_FILE_NAME).exists())
        {
            return "snapshot";
        }
        try (RecordingLog log = new RecordingLog(clusterDir, false))
        {
            final RecordingLog.Entry entry = log.getLatestSnapshot(0);
            if (null == entry)
            {
                return "snapshot";
            }
            return "snapshot recording " + entry.recordingId + " at log position " + entry.logPosition +
                " (files " + new File(archiveDir, entry.recordingId + "-*.rec") + ")";
        }
        catch (final RuntimeException ex)
        {
            return "snapshot (recording log unreadable: " + ex.getMessage() + ")";
        }
    }

    /**
     * Asks the consensus module to take a snapshot on every member. Only the leader acts on it.
     *
     * @return true when the request was placed (this member is the leader and no other
     * control action is pending).
     */
    public synchronized boolean takeSnapshot()
    {
        if (closed || service.role() != 2)
        {
            return false;
        }
        final AtomicCounter toggle = ClusterControl.findControlToggle(
            driver.consensusModule().context().aeron().countersReader(), settings.clusterId);
        return null != toggle && ClusterControl.ToggleState.SNAPSHOT.toggle(toggle);
    }

    static IdleStrategy newIdleStrategy(final MemberSettings s)
    {
        return newIdleStrategy(s, s.idleMaxParkUs);
    }

    private static IdleStrategy newIdleStrategy(final MemberSettings s, final long maxParkUs)
    {
        final IdleStrategy idle = newBackoff(s, maxParkUs);
        return LatencyTrace.ENABLED ? LatencyTrace.cycleMarking(idle) : idle;
    }

    private static IdleStrategy newBackoff(final MemberSettings s, final long maxParkUs)
    {
        // Spin a little for latency under load, then park up to maxParkUs: never busy-spin idle.
        return new BackoffIdleStrategy(
            10, s.idleYields, TimeUnit.MICROSECONDS.toNanos(s.idleMinParkUs), TimeUnit.MICROSECONDS.toNanos(maxParkUs));
    }

    /**
     * The consensus module's and the archive's backoff: up to {@code idle.woken.max.park.us} while
     * their driver wakes them and no election runs, else up to {@code idle.max.park.us}
     * ({@link AgentWakeups}, woken parks).
     */
    private static IdleStrategy newWokenBackoff(final MemberSettings s)
    {
        if (null == s.wakeups || !s.wakeups.wokenParks())
        {
            return newIdleStrategy(s, s.idleMaxParkUs);
        }
        final IdleStrategy idle = new SwitchedBackoff(
            newBackoff(s, s.idleMaxParkUs), newBackoff(s, s.wokenMaxParkUs), s.wakeups::mayParkLong);
        return LatencyTrace.ENABLED ? LatencyTrace.cycleMarking(idle) : idle;
    }

    /** As {@link #newIdleStrategy(MemberSettings)}, as {@code agent}'s: it wakes others ({@code agent.wakeups}). */
    static IdleStrategy newIdleStrategy(final MemberSettings s, final AgentWakeups.Agent agent)
    {
        // only a service that the consensus module wakes may park longer (AgentWakeups)
        final boolean wokenService = agent == AgentWakeups.Agent.SERVICE && null != s.wakeups;
        IdleStrategy idle = agent == AgentWakeups.Agent.ARCHIVE ? newWokenBackoff(s) :
            newIdleStrategy(s, wokenService ? Math.max(s.serviceMaxParkUs, s.idleMaxParkUs) : s.idleMaxParkUs);
        if (agent == AgentWakeups.Agent.DRIVER)
        {
            idle = LightWorkBackoff.of(idle, s.driverLightWork);
        }
        return null == s.wakeups ? idle : s.wakeups.wrap(idle, agent, null);
    }

    /** The consensus module's idle strategy: as above, with its commit position and election state to watch. */
    static IdleStrategy newConsensusIdleStrategy(final MemberSettings s, final ConsensusModule.Context cm)
    {
        final IdleStrategy idle = newWokenBackoff(s);
        return null == s.wakeups ? idle : s.wakeups.wrap(idle, AgentWakeups.Agent.CONSENSUS, () ->
        {
            final Counter commit = cm.commitPositionCounter();
            // read on the consensus module's own thread, which also closes the counter
            return null == commit || commit.isClosed() ? Long.MIN_VALUE : commit.get();
        }, () ->
        {
            final Counter state = cm.electionStateCounter();
            return null != state && !state.isClosed() && ElectionState.CLOSED.code() != state.get();
        });
    }

    static void logError(final Throwable ex)
    {
        // Aeron reports election and heartbeat events through the error handler as ClusterEvent.
        final String level = ex instanceof io.aeron.cluster.client.ClusterEvent ? "WARN" : "ERROR";
        System.err.println("[matchx member] " + level + " " + ex);
        System.err.flush();
    }

    private static void haltOnFatal(final String message, final Throwable cause)
    {
        // Halt rather than exit: the member must never go on serving with a partial state, and
        // shutdown hooks could block on the very agent thread that reports the failure.
        System.err.println("[matchx member] FATAL " + message);
        if (null != cause)
        {
            cause.printStackTrace(System.err);
        }
        System.err.flush();
        Runtime.getRuntime().halt(3);
    }

    public MemberSettings settings()
    {
        return settings;
    }

    public MatchService service()
    {
        return service;
    }

    public void close()
    {
        snapshotSchedule.close();
        synchronized (this)
        {
            closed = true;  // no snapshot check reads the counters any more
        }
        if (Handover.endLeadership("[matchx member " + settings.memberId + "]", service, driver.consensusModule()))
        {
            Handover.linger();
        }
        CloseHelper.closeAll(timing, container, driver);
    }
}
