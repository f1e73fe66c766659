package io.matchx.cluster;

import java.util.Properties;

/**
 * The validated settings of one member. Every key is documented in docs/operations.md; the
 * Python node runner fills them from its own config. Invalid settings fail here, before any
 * directory or port is touched.
 */
public final class MemberSettings
{
    /**
     * Stream ids of a member are Aeron's defaults plus {@code cluster.id * STREAM_ID_OFFSET_PER_CLUSTER}, so
     * members of several clusters can share one media driver (a worker, see {@link WorkerNode}) without
     * two of them publishing or subscribing on the same IPC stream. Cluster 0 keeps Aeron's defaults.
     */
    static final int STREAM_ID_OFFSET_PER_CLUSTER = 1000;
    static final int MAX_CLUSTER_ID = 1_000_000;
    /** As pyengine.node.settings: a snapshot at least this often while the log grows. */
    static final long DEFAULT_SNAPSHOT_INTERVAL_S = 30;
    /** The service's longest park: it is woken when there is log to apply, so this bounds only its other duties. */
    static final long DEFAULT_SERVICE_MAX_PARK_US = 10_000;
    /**
     * The consensus module's and the archive's longest park while their driver wakes them and no
     * election runs ({@link AgentWakeups}, woken parks). Their own timers then run up to this late:
     * a leader's heartbeat (every {@code heartbeat.interval.ms}, 20) by at most a fifth of its
     * interval, a follower's check of the leader's (120 ms) by 1/30.
     */
    static final long DEFAULT_WOKEN_MAX_PARK_US = 4_000;
    /**
     * Client sessions a member admits at once. Aeron's default, 10, refused clients in a test
     * under load: every connect attempt that timed out on the client's side stayed a session at
     * the leader until the session timeout. Each session costs the leader an egress publication
     * (3 term buffers of term.length in the driver's directory).
     */
    static final int DEFAULT_MAX_CONCURRENT_SESSIONS = 100;
    /** ... and whenever the log has grown this much since the last one (docs/operations.md). */
    static final long DEFAULT_SNAPSHOT_LOG_BYTES = 2L << 20;
    /**
     * Term length of the service's snapshot publication (an IPC channel of its own). The driver's
     * IPC default (term.length, 1 MB) lets the service run only half a term (512 KB) ahead of the
     * archive recording it: a 15 MB snapshot went through ~30 hand-offs between the service
     * thread and the archive's, each waiting on the other's idle strategy, while the member is in
     * SNAPSHOT (bench/reports/snapshot_write.md). 16 MB takes a 15 MB snapshot in two windows. The
     * term files are sparse and removed with the publication after each snapshot, so only the
     * pages written are used, but the driver checks /dev/shm for all three terms (48 MB) when it
     * creates the publication: a larger term wants a larger shm_size (docs/docker.md).
     */
    static final int DEFAULT_SNAPSHOT_TERM_LENGTH = 16 << 20;
    /**
     * Frame size of the snapshot publication, 0 for the driver's (1,408-byte frames). 64 KB frames
     * (~45x fewer for the archive to checksum) showed no clear gain on a loaded machine, so the
     * default stays; the setting is there to measure it again.
     */
    static final int DEFAULT_SNAPSHOT_MTU = 0;
    /** Driver SHARED (its own thread), archive SHARED, consensus module and service: four agent threads. */
    static final String THREADING_SHARED = "shared";
    /**
     * The driver in INVOKER mode, run by the archive's agent thread (the archive conductor invokes
     * it): one thread fewer per member. Only for a member with its own driver, not a worker's.
     */
    static final String THREADING_COMPACT = "compact";

    final int clusterId;
    final int memberId;
    final String clusterMembers;
    final String host;
    final int archivePort;
    final String baseDir;
    final String aeronDir;
    final int termLength;
    final int ingressTermLength;
    final int segmentLength;
    final int snapshotTermLength;
    final int snapshotMtu;
    final int bufferCapacity;
    final long heartbeatIntervalMs;
    final long heartbeatTimeoutMs;
    final long electionTimeoutMs;
    final long electionStatusIntervalMs;
    final long startupCanvassTimeoutMs;
    final long sessionTimeoutMs;
    /** Client sessions a member admits at once (Aeron's default, 10, refused the 11th client). */
    final int maxConcurrentSessions;
    final long idleMaxParkUs;
    final long idleMinParkUs;
    final int idleYields;
    /** {@code idle.driver.light.work}: a driver duty cycle with no more work than this leaves its backoff going ({@link LightWorkBackoff}); 0: off. */
    final int driverLightWork;
    /**
     * {@code idle.service.max.park.us}: the service's longest park. Longer than the others' because the
     * consensus module wakes the service when the commit moves or an election runs ({@link AgentWakeups});
     * with {@code agent.wakeups=off} the service keeps {@link #idleMaxParkUs}.
     */
    final long serviceMaxParkUs;
    /**
     * {@code idle.woken.max.park.us}: the consensus module's and the archive's longest park outside
     * elections, when their driver wakes them; at most {@link #idleMaxParkUs} turns woken parks off,
     * and so does {@code threading=compact}.
     */
    final long wokenMaxParkUs;
    final long snapshotIntervalS;
    final long snapshotLogBytes;
    final long setupRepeatMs;
    final int streamIdOffset;
    final String threading;
    /** {@code agent.wakeups}: off, commit or all: agents wake the agent that handles what they produced ({@link AgentWakeups}). */
    final String agentWakeups;
    /** The member's agent threads, when {@link #agentWakeups} (one per member, shared by its idle strategies). */
    final AgentWakeups wakeups;

    private MemberSettings(final Properties p)
    {
        clusterId = intValue(p, "cluster.id", 0);
        memberId = intValue(p, "member.id", -1);
        clusterMembers = required(p, "cluster.members");
        host = required(p, "host");
        archivePort = intValue(p, "archive.port", -1);
        baseDir = required(p, "base.dir");
        aeronDir = required(p, "aeron.dir");
        termLength = intValue(p, "term.length", 1 << 20);
        ingressTermLength = intValue(p, "ingress.term.length", 1 << 20);
        segmentLength = intValue(p, "segment.length", 8 << 20);
        snapshotTermLength = intValue(p, "snapshot.term.length", DEFAULT_SNAPSHOT_TERM_LENGTH);
        snapshotMtu = intValue(p, "snapshot.mtu", DEFAULT_SNAPSHOT_MTU);
        bufferCapacity = intValue(p, "buffer.capacity", 4 << 20);
        heartbeatIntervalMs = longValue(p, "heartbeat.interval.ms", 20);
        heartbeatTimeoutMs = longValue(p, "heartbeat.timeout.ms", 120);
        electionTimeoutMs = longValue(p, "election.timeout.ms", 20);
        electionStatusIntervalMs = longValue(p, "election.status.interval.ms", 100);
        startupCanvassTimeoutMs = longValue(p, "startup.canvass.timeout.ms", 1_000);
        sessionTimeoutMs = longValue(p, "session.timeout.ms", 10_000);
        maxConcurrentSessions = intValue(p, "max.concurrent.sessions", DEFAULT_MAX_CONCURRENT_SESSIONS);
        idleMaxParkUs = longValue(p, "idle.max.park.us", 1_000);
        idleMinParkUs = longValue(p, "idle.min.park.us", 1);
        idleYields = intValue(p, "idle.yields", 10);
        driverLightWork = intValue(p, "idle.driver.light.work", LightWorkBackoff.DEFAULT_LIGHT_WORK);
        serviceMaxParkUs = longValue(p, "idle.service.max.park.us", DEFAULT_SERVICE_MAX_PARK_US);
        wokenMaxParkUs = longValue(p, "idle.woken.max.park.us", DEFAULT_WOKEN_MAX_PARK_US);
        snapshotIntervalS = longValue(p, "snapshot.interval.s", DEFAULT_SNAPSHOT_INTERVAL_S);
        snapshotLogBytes = longValue(p, "snapshot.log.bytes", DEFAULT_SNAPSHOT_LOG_BYTES);
        setupRepeatMs = longValue(p, "setup.repeat.ms", SetupRepeat.DEFAULT_MS);
        threading = p.getProperty("threading", THREADING_SHARED).trim();
        agentWakeups = p.getProperty("agent.wakeups", AgentWakeups.COMMIT).trim();
        // compact threading runs the archive on the driver's thread, whose light cycles (an archive
        // control response) wake nobody: its consensus module keeps the short park
        wakeups = AgentWakeups.OFF.equals(agentWakeups) ? null : new AgentWakeups(AgentWakeups.ALL.equals(agentWakeups),
            wokenMaxParkUs > idleMaxParkUs && THREADING_SHARED.equals(threading));

        check(clusterId >= 0 && clusterId <= MAX_CLUSTER_ID, "cluster.id must be in 0.." + MAX_CLUSTER_ID);
        check(memberId >= 0, "member.id must be >= 0");
        check(maxConcurrentSessions >= 1 && maxConcurrentSessions <= 100_000,
            "max.concurrent.sessions must be in 1..100000");
        check(archivePort > 0 && archivePort < 65536, "archive.port must be a port number");
        check(isPowerOfTwo(termLength) && termLength >= 64 * 1024, "term.length must be a power of two >= 64k");
        check(isPowerOfTwo(ingressTermLength) && ingressTermLength >= 64 * 1024,
            "ingress.term.length must be a power of two >= 64k");
        check(isPowerOfTwo(snapshotTermLength) && snapshotTermLength >= 64 * 1024 && snapshotTermLength <= 1 << 30,
            "snapshot.term.length must be a power of two in 64k..1g");
        check(snapshotMtu == 0 || (snapshotMtu % 32 == 0 && snapshotMtu >= 4096 && snapshotMtu <= 65504),
            "snapshot.mtu must be 0 (the driver's) or a multiple of 32 in 4096..65504");
        check(isPowerOfTwo(segmentLength) && segmentLength >= termLength, "segment.length must be a power of two >= term.length");
        check(heartbeatIntervalMs > 0 && heartbeatTimeoutMs > 2 * heartbeatIntervalMs,
            "heartbeat.timeout.ms must exceed twice heartbeat.interval.ms");
        check(electionTimeoutMs > 0 && electionTimeoutMs < heartbeatTimeoutMs,
            "election.timeout.ms must be > 0 and below heartbeat.timeout.ms");
        check(electionStatusIntervalMs > 0 && electionStatusIntervalMs < heartbeatTimeoutMs,
            "election.status.interval.ms must be > 0 and below heartbeat.timeout.ms");
        check(startupCanvassTimeoutMs >= 2 * heartbeatTimeoutMs,
            "startup.canvass.timeout.ms must be at least twice heartbeat.timeout.ms");
        check(idleMinParkUs > 0 && idleMinParkUs <= idleMaxParkUs, "idle.min.park.us must be in 1..idle.max.park.us");
        check(idleYields >= 0, "idle.yields must be >= 0");
        check(driverLightWork >= 0 && driverLightWork < 64, "idle.driver.light.work must be in 0..63");
        check(serviceMaxParkUs >= idleMinParkUs && serviceMaxParkUs <= 1_000_000,
            "idle.service.max.park.us must be in idle.min.park.us..1000000");
        check(wokenMaxParkUs >= 1 && wokenMaxParkUs <= 100_000, "idle.woken.max.park.us must be in 1..100000");
        check(AgentWakeups.OFF.equals(agentWakeups) || AgentWakeups.COMMIT.equals(agentWakeups) ||
            AgentWakeups.ALL.equals(agentWakeups), "agent.wakeups must be off, commit or all");
        check(THREADING_SHARED.equals(threading) || THREADING_COMPACT.equals(threading),
            "threading must be " + THREADING_SHARED + " or " + THREADING_COMPACT);
        check(setupRepeatMs >= 1 && setupRepeatMs <= SetupRepeat.MAX_MS,
            "setup.repeat.ms must be in 1.." + SetupRepeat.MAX_MS);
        check(snapshotIntervalS >= 0, "snapshot.interval.s must be >= 0 (0 = no schedule)");
        check(snapshotLogBytes >= 0, "snapshot.log.bytes must be >= 0 (0 = no size trigger)");
        check(bufferCapacity >= termLength / 8, "buffer.capacity must hold the largest message (term.length/8)");
        streamIdOffset = clusterId * STREAM_ID_OFFSET_PER_CLUSTER;
    }

    public static MemberSettings from(final Properties properties)
    {
        return new MemberSettings(properties);
    }

    private static boolean isPowerOfTwo(final int value)
    {
        return value > 0 && (value & (value - 1)) == 0;
    }

    private static void check(final boolean condition, final String message)
    {
        if (!condition)
        {
            throw new IllegalArgumentException("invalid member setting: " + message);
        }
    }

    private static String required(final Properties p, final String key)
    {
        final String value = p.getProperty(key);
        if (null == value || value.isBlank())
        {
            throw new IllegalArgumentException("invalid member setting: " + key + " is required");
        }
        return value;
    }

    private static int intValue(final Properties p, final String key, final int defaultValue)
    {
        return (int)longValue(p, key, defaultValue);
    }

    private static long longValue(final Properties p, final String key, final long defaultValue)
    {
        return number(p, key, defaultValue, "member");
    }

    /** A numeric setting of a member or worker ({@code what}) properties file, or its default. */
    static long number(final Properties p, final String key, final long defaultValue, final String what)
    {
        final String value = p.getProperty(key);
        if (null == value)
        {
            return defaultValue;
        }
        try
        {
            return Long.parseLong(value.trim());
        }
        catch (final NumberFormatException ex)
        {
            throw new IllegalArgumentException(
                "invalid " + what + " setting: " + key + "=" + value + " is not a number");
        }
    }
}
