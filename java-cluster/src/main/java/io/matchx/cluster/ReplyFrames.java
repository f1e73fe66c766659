package io.matchx.cluster;

import org.agrona.DirectBuffer;

import java.nio.ByteOrder;

/**
 * Reads the reply frames a {@link ServiceHandler} writes: {@code int64 sessionId, int32 length, bytes}.
 */
final class ReplyFrames
{
    static final int HEADER_LENGTH = Long.BYTES + Integer.BYTES;
    /** A frame with this length and no body asks to close the session (e.g. its token was revoked). */
    static final int CLOSE_SESSION = -1;

    interface Consumer
    {
        void onFrame(long clusterSessionId, int offset, int length);
    }

    private ReplyFrames()
    {
    }

    /**
     * @return the number of frames read.
     * @throws IllegalStateException when the frames do not add up to {@code totalLength}.
     */
    static int forEach(final DirectBuffer buffer, final int totalLength, final Consumer consumer)
    {
        int offset = 0;
        int frames = 0;
        while (offset < totalLength)
        {
            if (totalLength - offset < HEADER_LENGTH)
            {
                throw new IllegalStateException("truncated reply frame header at " + offset);
            }
            final long sessionId = buffer.getLong(offset, ByteOrder.LITTLE_ENDIAN);
            final int length = buffer.getInt(offset + Long.BYTES, ByteOrder.LITTLE_ENDIAN);
            final int body = offset + HEADER_LENGTH;
            if (length == CLOSE_SESSION)
            {
                consumer.onFrame(sessionId, body, CLOSE_SESSION);
                offset = body;
                frames++;
                continue;
            }
            if (length < 0 || length > totalLength - body)
            {
                throw new IllegalStateException("reply frame length " + length + " out of range at " + offset);
            }
            consumer.onFrame(sessionId, body, length);
            offset = body + length;
            frames++;
        }
        return frames;
    }
}
