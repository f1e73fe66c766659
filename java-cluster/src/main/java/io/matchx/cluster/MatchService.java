package io.matchx.cluster;

import io.aeron.ExclusivePublication;
import io.aeron.Image;
import io.aeron.Publication;
import io.aeron.cluster.codecs.CloseReason;
import io.aeron.cluster.service.ClientSession;
import io.aeron.cluster.service.Cluster;
import io.aeron.cluster.service.ClusteredService;
import io.aeron.logbuffer.Header;
import org.agrona.DirectBuffer;
import org.agrona.concurrent.IdleStrategy;
import org.agrona.concurrent.UnsafeBuffer;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.concurrent.TimeUnit;

/**
 * The cluster's service on every member. It copies each log message into a direct buffer that
 * the Python handler maps once. The leader makes one crossing into Python per message (a message
 * may carry a batch of commands), then offers the reply frames Python wrote. A member that is not
 * the leader (a follower, or any member replaying its log at a start) sends no replies (Aeron's
 * follower {@code ClientSession.offer} sends nothing), so it gathers the messages of one log poll
 * and hands them to Python in one crossing ({@link ServiceHandler#onSessionMessages}): a
 * crossing was ~6 of a member's ~20 us of CPU per message (bench/reports/single_order_path.md),
 * and a restarted member replays its log after the snapshot, and catches up, through this path.
 */
public final class MatchService implements ClusteredService
{
    /** Bounded retries of a back-pressured reply: a slow client must not stall the log. */
    static final int MAX_OFFER_ATTEMPTS = 16;
    /** The reply kind byte of a message (after 'MX' and the version) and the market data kind. */
    static final int MARKET_KIND_AT = 3;
    static final byte KIND_MARKET = 4;
    /**
     * A planned handover's hold notice (reply kind 5, {@code 'MX', 1, 5, count 0}): the leader is
     * about to end its log; the SDK holds new commands until the new leader's event and answers
     * with a hold ack (request kind 6, {@code 'MX', 1, 6, client id, count 0}, 14 bytes) once it
     * has stopped sending. A client that does not know the notice ignores it (pyengine/wire/protocol.py).
     */
    static final byte KIND_HOLD = 5;
    static final byte KIND_HOLD_ACK = 6;
    static final int HOLD_ACK_LENGTH = 14;
    private static final byte[] HOLD_FRAME = { 'M', 'X', 1, KIND_HOLD, 0, 0 };
    /** A gathered message's record header: int64 session id, int64 timestamp, int64 position, int32 length. */
    static final int GATHERED_HEADER_LENGTH = 3 * Long.BYTES + Integer.BYTES;
    private static final int LEADER = Cluster.Role.LEADER.code();

    private final ServiceHandler handler;
    private final UnsafeBuffer input;
    private final UnsafeBuffer output;
    private final ByteBuffer inputByteBuffer;
    private final ByteBuffer outputByteBuffer;
    private final StatusFile statusFile;
    private final FatalHandler fatalHandler;
    private final long statusIntervalNs;
    private final int memberId;

    private Cluster cluster;
    private volatile String snapshotSource = "snapshot";
    private volatile CredentialsVerifier credentialsVerifier;
    private volatile int role = -1;
    private volatile int leaderMemberId = -1;
    private volatile long leadershipTermId = -1;
    private volatile long logPosition;
    private volatile long lastSnapshotPosition = -1;
    // where and when the state this member holds was last saved (its last snapshot, or the one it
    // started from, or its start): what the snapshot schedule measures log growth and time from
    private volatile long snapshotBaselinePosition;
    private volatile long snapshotBaselineNs = System.nanoTime();
    private volatile long snapshotTakenAtMs;
    private volatile StatusFile.SnapshotStats lastSnapshot = StatusFile.SnapshotStats.NONE;
    private volatile long droppedReplies;
    private long nextStatusNs;
    // set by the start-phase watcher when the member's first election closes; the service thread
    // then calls the handler's onInStep once (doBackgroundWork)
    private volatile boolean inStep;
    private volatile int leaderAtInStep = -1;
    private boolean inStepDelivered;
    // For /metrics (MemberMetrics): written by the service thread only, read at scrape time.
    private volatile long ingressMessages;
    private volatile long egressMessages;
    private volatile long backPressure;
    private volatile long leaderChanges;
    private volatile long roleChanges;
    private volatile long sessions;
    private volatile long snapshots;
    private volatile long lastSnapshotEpochMs = -1;
    // A planned handover's drain (Handover): set by the closing thread, the rest by the service
    // thread; the closing thread reads the counts. Sessions told to hold and those that acked.
    private volatile boolean holding;
    private volatile long lastCommandNs;
    private volatile int holdsSent;
    private volatile int holdAcks;
    private final org.agrona.collections.LongHashSet toldToHold = new org.agrona.collections.LongHashSet();
    private final org.agrona.collections.LongHashSet ackedHold = new org.agrona.collections.LongHashSet();
    private final UnsafeBuffer holdFrame = new UnsafeBuffer(HOLD_FRAME);
    // Messages gathered in the input buffer (records from offset 0) and not yet handed to Python:
    // service thread only. Python must have applied them before anything else it is told (a
    // session opens or closes, a snapshot, a role change, the end of a duty cycle): flushGathered.
    private int gatheredCount;
    private int gatheredLength;
    private volatile long gatheredCrossings;

    /** What to do when the service cannot go on (for example a snapshot that does not load). */
    public interface FatalHandler
    {
        void onFatal(String message, Throwable cause);
    }

    public MatchService(
        final int memberId,
        final ServiceHandler handler,
        final int bufferCapacity,
        final StatusFile statusFile,
        final FatalHandler fatalHandler)
    {
        this.memberId = memberId;
        this.handler = handler;
        this.inputByteBuffer = ByteBuffer.allocateDirect(bufferCapacity);
        this.outputByteBuffer = ByteBuffer.allocateDirect(bufferCapacity);
        this.input = new UnsafeBuffer(inputByteBuffer);
        this.output = new UnsafeBuffer(outputByteBuffer);
        this.statusFile = statusFile;
        this.fatalHandler = fatalHandler;
        this.statusIntervalNs = TimeUnit.MILLISECONDS.toNanos(200);
    }

    /** Turns on token authentication at connect (set before launch); null leaves it off. */
    public void credentialsVerifier(final CredentialsVerifier verifier)
    {
        this.credentialsVerifier = verifier;
    }

    public CredentialsVerifier credentialsVerifier()
    {
        return credentialsVerifier;
    }

    /** Names the snapshot this member will load (recording and files), for error messages. */
    public void snapshotSource(final String description)
    {
        this.snapshotSource = description;
    }

    /**
     * When the snapshot this member will load was taken, or when the log began if the cluster never
     * took one (cluster time, epoch ms; 0 unknown). The snapshot schedule's time trigger counts
     * from it, not from this member's start: with members restarted every few seconds (a failover
     * run) a leader had nearly always started less than one interval ago, so only the size trigger
     * fired and a restart's replay grew with the log.
     */
    public void snapshotTakenAtMs(final long epochMs)
    {
        this.snapshotTakenAtMs = epochMs;
    }

    /** The buffer holding the current request; Python maps it once with a memoryview. */
    public ByteBuffer inputBuffer()
    {
        return inputByteBuffer;
    }

    /** The buffer Python writes reply frames into. */
    public ByteBuffer outputBuffer()
    {
        return outputByteBuffer;
    }

    public void onStart(final Cluster cluster, final Image snapshotImage)
    {
        this.cluster = cluster;
        this.role = cluster.role().code();
        // the position of the snapshot being loaded (0 without one): the log after it is what a
        // restart would replay
        snapshotBaselinePosition = cluster.logPosition();
        snapshotBaselineNs = System.nanoTime();
        if (snapshotTakenAtMs > 0)
        {
            final long ageMs = Math.max(0, System.currentTimeMillis() - snapshotTakenAtMs);
            snapshotBaselineNs -= TimeUnit.MILLISECONDS.toNanos(ageMs);
        }
        byte[] snapshot = null;
        if (null != snapshotImage)
        {
            final long readStarted = System.nanoTime();
            try
            {
                snapshot = SnapshotChunks.read(snapshotImage, cluster.idleStrategy());
                StartPhases.log("[matchx member " + memberId + "]", "snapshot at log position " +
                    snapshotBaselinePosition + " read from the archive, " + snapshot.length + " bytes in " +
                    TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - readStarted) + " ms");
            }
            catch (final RuntimeException ex)
            {
                fatalHandler.onFatal(snapshotSource + " failed to load: " + ex.getMessage(), ex);
                return;
            }
        }
        try
        {
            handler.onStart(memberId, snapshot);
            // The sessions a snapshot restores (Aeron loads them before onStart) are never
            // opened again: hand their principals over now, or this member alone would refuse
            // their commands (missing_token) while members that replayed the log accept them.
            for (final ClientSession session : cluster.clientSessions())
            {
                handler.onSessionOpen(session.id(), cluster.time(), session.encodedPrincipal());
            }
        }
        catch (final RuntimeException ex)
        {
            fatalHandler.onFatal((null == snapshot ? "service failed to start: " :
                snapshotSource + " failed to load: ") + ex.getMessage(), ex);
        }
    }

    public void onSessionOpen(final ClientSession session, final long timestamp)
    {
        flushGathered();
        sessions++;
        handler.onSessionOpen(session.id(), timestamp, session.encodedPrincipal());
    }

    public void onSessionClose(final ClientSession session, final long timestamp, final CloseReason closeReason)
    {
        flushGathered();
        sessions--;
        handler.onSessionClose(session.id(), timestamp);
    }

    public void onSessionMessage(
        final ClientSession session,
        final long timestamp,
        final DirectBuffer buffer,
        final int offset,
        final int length,
        final Header header)
    {
        LatencyTrace.mark(LatencyTrace.SERVICE_ENTRY);
        logPosition = header.position();
        ingressMessages++;
        if (isHoldAck(buffer, offset, length))
        {
            // in every member's log, inert everywhere (never reaches the engine); only a draining
            // leader counts it: every command this session sent before it has now been applied
            if (holding && toldToHold.contains(session.id()) && ackedHold.add(session.id()))
            {
                holdAcks++;
            }
            return;
        }
        if (role != LEADER && gather(session.id(), timestamp, header.position(), buffer, offset, length))
        {
            return;
        }
        flushGathered();
        if (length > input.capacity())
        {
            // Deterministic on every member: the handler sees an empty message and rejects it.
            handler.onSessionMessage(session.id(), timestamp, header.position(), 0);
            return;
        }
        input.putBytes(0, buffer, offset, length);
        final int replyLength = handler.onSessionMessage(session.id(), timestamp, header.position(), length);
        LatencyTrace.mark(LatencyTrace.SERVICE_HANDLER_RETURNED);
        if (replyLength > 0)
        {
            ReplyFrames.forEach(output, replyLength, this::offerReply);
        }
        LatencyTrace.mark(LatencyTrace.SERVICE_OFFERED);
        if (holding)
        {
            lastCommandNs = System.nanoTime();
            if (!toldToHold.contains(session.id()))
            {
                // after this message's answers: the session holds what it submits from now on
                toldToHold.add(session.id());
                offerHold(session.id());
                holdsSent++;
            }
        }
    }

    /**
     * Adds a message to the gathered ones (handing those over first if it does not fit after them).
     * False for a message too large to gather even alone: it takes the one-message path, which
     * treats a message larger than the buffer as it always has.
     */
    private boolean gather(
        final long sessionId,
        final long timestamp,
        final long position,
        final DirectBuffer buffer,
        final int offset,
        final int length)
    {
        final int recordLength = GATHERED_HEADER_LENGTH + length;
        if (recordLength > input.capacity())
        {
            return false;
        }
        if (gatheredLength + recordLength > input.capacity())
        {
            flushGathered();
        }
        final int at = gatheredLength;
        input.putLong(at, sessionId, ByteOrder.LITTLE_ENDIAN);
        input.putLong(at + Long.BYTES, timestamp, ByteOrder.LITTLE_ENDIAN);
        input.putLong(at + 2 * Long.BYTES, position, ByteOrder.LITTLE_ENDIAN);
        input.putInt(at + 3 * Long.BYTES, length, ByteOrder.LITTLE_ENDIAN);
        input.putBytes(at + GATHERED_HEADER_LENGTH, buffer, offset, length);
        gatheredLength = at + recordLength;
        gatheredCount++;
        return true;
    }

    /** Hands the gathered messages to Python in one crossing; nothing to do when there are none. */
    private void flushGathered()
    {
        if (0 == gatheredCount)
        {
            return;
        }
        final int count = gatheredCount;
        final int length = gatheredLength;
        // cleared first: if the handler throws, the messages are not handed over a second time
        gatheredCount = 0;
        gatheredLength = 0;
        gatheredCrossings++;
        egressMessages += handler.onSessionMessages(count, length);
    }

    /** Crossings that carried gathered messages (a follower's, or any member's replay at a start). */
    public long gatheredCrossings()
    {
        return gatheredCrossings;
    }

    static boolean isHoldAck(final DirectBuffer buffer, final int offset, final int length)
    {
        return length == HOLD_ACK_LENGTH && buffer.getByte(offset) == 'M' && buffer.getByte(offset + 1) == 'X' &&
            buffer.getByte(offset + 2) == 1 && buffer.getByte(offset + MARKET_KIND_AT) == KIND_HOLD_ACK;
    }

    /**
     * Starts a planned handover's drain (called by the closing thread, on the leader): from now on
     * each session that sends a command is told to hold after that command's answers.
     */
    public void beginHold()
    {
        lastCommandNs = System.nanoTime();
        holding = true;
    }

    /** Sessions told to hold so far (the closing thread reads it). */
    public int holdsSent()
    {
        return holdsSent;
    }

    /** Of those, the ones whose hold ack has been applied: everything they sent before is answered. */
    public int holdAcks()
    {
        return holdAcks;
    }

    /** When the last command (not a hold ack) was applied during the drain, System.nanoTime(). */
    public long lastCommandNs()
    {
        return lastCommandNs;
    }

    private void offerReply(final long clusterSessionId, final int offset, final int length)
    {
        if (length == ReplyFrames.CLOSE_SESSION)
        {
            // Only the leader's call has an effect; followers' are ignored by Aeron.
            cluster.closeClientSession(clusterSessionId);
            return;
        }
        final ClientSession target = cluster.getClientSession(clusterSessionId);
        if (null == target)
        {
            return;
        }
        final IdleStrategy idle = cluster.idleStrategy();
        idle.reset();
        // Market data (reply kind 4, pyengine/wire/protocol.py) is offered once: a subscriber
        // that cannot keep up loses the message, notices the jump in the sequence and re-syncs
        // (docs/market-data.md); retrying would let one slow reader stall the whole service.
        final int attempts = length > MARKET_KIND_AT && output.getByte(offset + MARKET_KIND_AT) == KIND_MARKET ?
            1 : MAX_OFFER_ATTEMPTS;
        for (int attempt = 0; attempt < attempts; attempt++)
        {
            final long result = target.offer(output, offset, length);
            if (result > 0)
            {
                egressMessages++;
                return;
            }
            if (result == Publication.CLOSED || result == Publication.NOT_CONNECTED ||
                result == Publication.MAX_POSITION_EXCEEDED)
            {
                break;
            }
            backPressure++;
            idle.idle();
        }
        if (attempts == 1)
        {
            return; // not counted as a dropped reply: the subscriber's sequence shows the loss
        }
        droppedReplies++;
    }

    private void offerHold(final long clusterSessionId)
    {
        final ClientSession target = cluster.getClientSession(clusterSessionId);
        if (null == target)
        {
            return;
        }
        final IdleStrategy idle = cluster.idleStrategy();
        idle.reset();
        for (int attempt = 0; attempt < MAX_OFFER_ATTEMPTS; attempt++)
        {
            final long result = target.offer(holdFrame, 0, HOLD_FRAME.length);
            if (result > 0 || result == Publication.CLOSED || result == Publication.NOT_CONNECTED ||
                result == Publication.MAX_POSITION_EXCEEDED)
            {
                return; // unsent: the session follows the new leader the normal way (resend)
            }
            idle.idle();
        }
    }

    public void onTimerEvent(final long correlationId, final long timestamp)
    {
        flushGathered();
    }

    public void onTakeSnapshot(final ExclusivePublication snapshotPublication)
    {
        flushGathered();
        final long position = cluster.logPosition();
        final long started = System.nanoTime();
        final java.nio.ByteBuffer state = handler.onTakeSnapshot(position);
        final long built = System.nanoTime();
        try
        {
            SnapshotChunks.write(snapshotPublication, state, cluster.idleStrategy());
        }
        finally
        {
            handler.onSnapshotWritten();
        }
        lastSnapshotPosition = position;
        snapshotBaselinePosition = position;
        snapshotBaselineNs = started;
        lastSnapshot = new StatusFile.SnapshotStats(
            state.remaining(),
            TimeUnit.NANOSECONDS.toMillis(built - started),
            TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - built));
        snapshots++;
        lastSnapshotEpochMs = System.currentTimeMillis();
    }

    public void onRoleChange(final Cluster.Role newRole)
    {
        // applied in the role they arrived in (market data, for one, is encoded by a leader only)
        flushGathered();
        role = newRole.code();
        roleChanges++;
        handler.onRoleChange(role);
        writeStatus();
    }

    public void onTerminate(final Cluster cluster)
    {
        flushGathered();
        writeStatus();
        handler.onTerminate();
    }

    public void onNewLeadershipTermEvent(
        final long leadershipTermId,
        final long logPosition,
        final long timestamp,
        final long termBaseLogPosition,
        final int leaderMemberId,
        final int logSessionId,
        final TimeUnit timeUnit,
        final int appVersion)
    {
        flushGathered();
        this.leadershipTermId = leadershipTermId;
        if (this.leaderMemberId != leaderMemberId)
        {
            leaderChanges++;  // as etcd's leader_changes_seen: the first leader a member sees counts
        }
        this.leaderMemberId = leaderMemberId;
        this.logPosition = logPosition;
        writeStatus();
    }

    /**
     * The member's first election has closed (any thread); the service thread tells the handler. With
     * the leader its consensus module knows ({@code -1}: not known). A member
     * that restarts from a snapshot taken after its term began, and catches up, sees no new leadership
     * term event in the log: without this its status and metrics named no leader until the next
     * election, and `matchctl member start|restart` waited for one in vain (seen on an idle partition).
     */
    public void inStep(final int leaderSeenByConsensusModule)
    {
        leaderAtInStep = leaderSeenByConsensusModule;
        inStep = true;
    }

    public int doBackgroundWork(final long nowNs)
    {
        // Aeron calls this after every log poll: the messages of one poll are gathered at most
        // (50 fragments, ClusteredServiceContainer's log fragment limit), then applied here
        final boolean flushed = 0 != gatheredCount;
        flushGathered();
        if (inStep && !inStepDelivered)
        {
            inStepDelivered = true;
            if (leaderMemberId < 0 && leaderAtInStep >= 0)
            {
                leaderChanges++;  // the first leader this member sees, as in onNewLeadershipTermEvent
                leaderMemberId = leaderAtInStep;
                writeStatus();
            }
            handler.onInStep();
            return 1;
        }
        if (nowNs - nextStatusNs >= 0)
        {
            nextStatusNs = nowNs + statusIntervalNs;
            if (null != cluster)
            {
                logPosition = Math.max(logPosition, cluster.logPosition());
            }
            writeStatus();
            return 1;
        }
        return flushed ? 1 : 0;
    }

    private void writeStatus()
    {
        if (null != statusFile && null != cluster)
        {
            statusFile.write(memberId, role, leaderMemberId, leadershipTermId, logPosition,
                lastSnapshotPosition, lastSnapshot, droppedReplies);
        }
    }

    /** Nanoseconds since this member's last snapshot (or the one it started from, or its start). */
    public long nanosSinceSnapshot(final long nowNs)
    {
        return nowNs - snapshotBaselineNs;
    }

    /** Bytes of log since this member's last snapshot (or the one it started from). */
    public long logSinceSnapshot()
    {
        return logPosition - snapshotBaselinePosition;
    }

    public int role()
    {
        return role;
    }

    public int leaderMemberId()
    {
        return leaderMemberId;
    }

    public long logPosition()
    {
        return logPosition;
    }

    public long leadershipTermId()
    {
        return leadershipTermId;
    }

    /** A copy of the counts for /metrics (each field read once; they are not read atomically). */
    public Counts counts()
    {
        final Counts c = new Counts();
        c.ingressMessages = ingressMessages;
        c.egressMessages = egressMessages;
        c.backPressure = backPressure;
        c.droppedReplies = droppedReplies;
        c.leaderChanges = leaderChanges;
        c.roleChanges = roleChanges;
        c.sessions = sessions;
        c.snapshots = snapshots;
        c.lastSnapshotEpochMs = lastSnapshotEpochMs;
        c.lastSnapshotPosition = lastSnapshotPosition;
        c.lastSnapshot = lastSnapshot;
        return c;
    }

    /** What {@link #counts} returns. */
    public static final class Counts
    {
        long ingressMessages;
        long egressMessages;
        long backPressure;
        long droppedReplies;
        long leaderChanges;
        long roleChanges;
        long sessions;
        long snapshots;
        long lastSnapshotEpochMs;
        long lastSnapshotPosition;
        StatusFile.SnapshotStats lastSnapshot;
    }
}
