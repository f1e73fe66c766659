package io.matchx.cluster;

import java.nio.ByteBuffer;

/**
 * The narrow interface the Python service implements (through a JPype proxy).
 *
 * <p>Every method is abstract on purpose: JPype cannot call a Java default method that a Python
 * proxy does not define. Arguments are primitives and byte arrays so a crossing stays cheap; the
 * hot path ({@link #onSessionMessage}) passes only a length, the bytes themselves sit in direct
 * buffers that Python maps once with a memoryview.
 */
public interface ServiceHandler
{
    /**
     * Called once before any message, on every member.
     *
     * @param memberId this member's id.
     * @param snapshot the assembled snapshot bytes, or null when the member starts empty.
     */
    void onStart(int memberId, byte[] snapshot);

    /**
     * A message from the log. The request bytes are at offset 0 of the input buffer; the handler
     * writes reply frames ({@code int64 clusterSessionId, int32 length, bytes}, little-endian)
     * into the output buffer and returns the number of bytes written.
     */
    int onSessionMessage(long clusterSessionId, long timestamp, long logPosition, int length);

    /**
     * Several log messages in one crossing, in log order, on a member that is not the leader (a
     * follower, or any member replaying its log at a start): its replies are never sent (Aeron's
     * follower {@code ClientSession.offer} sends nothing), so the handler writes no reply frames.
     * The input buffer holds {@code count} records from offset 0, each {@code int64
     * clusterSessionId, int64 timestamp, int64 logPosition, int32 length} (little-endian) and the
     * message's bytes; each is applied exactly as {@link #onSessionMessage} would apply it, an
     * error isolated to its own message.
     *
     * @return the number of reply frames the messages produced (what the leader would have sent),
     * for the egress count.
     */
    int onSessionMessages(int count, int length);

    void onSessionOpen(long clusterSessionId, long timestamp, byte[] encodedPrincipal);

    void onSessionClose(long clusterSessionId, long timestamp);

    /**
     * @return the whole service state, from its position to its limit; the shim chunks it into the
     * snapshot publication before it returns to the service. A direct buffer over the service's
     * own memory saves copying a busy engine's tens of MB into a Java array while the member is in
     * its snapshot (it notices a dead leader only afterwards).
     */
    ByteBuffer onTakeSnapshot(long logPosition);

    /** The buffer {@link #onTakeSnapshot} returned has been written (or failed to): it may go. */
    void onSnapshotWritten();

    /**
     * The member's first election since its start has closed (it is in step with the cluster),
     * called once on the service thread between log messages: work that a start would otherwise
     * do while the cluster waits for this member (warming the snapshot cache after a restore).
     */
    void onInStep();

    /** @param role 0 follower, 1 candidate, 2 leader (Aeron's Cluster.Role codes). */
    void onRoleChange(int role);

    void onTerminate();
}
