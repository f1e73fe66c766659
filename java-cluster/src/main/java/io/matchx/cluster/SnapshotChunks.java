package io.matchx.cluster;

import io.aeron.ExclusivePublication;
import io.aeron.Image;
import io.aeron.logbuffer.FragmentHandler;
import org.agrona.DirectBuffer;
import org.agrona.concurrent.IdleStrategy;
import org.agrona.concurrent.UnsafeBuffer;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;

/**
 * Writes a service snapshot as a header message followed by chunks no larger than the
 * publication's maximum payload, and reads it back. The header carries the total length and a
 * CRC so a truncated or corrupt snapshot is refused instead of loaded in part.
 */
public final class SnapshotChunks
{
    static final int MAGIC = 0x4D585331; // "MXS1"
    static final int HEADER_LENGTH = 4 + 8 + 8;

    private SnapshotChunks()
    {
    }

    /** Writes {@code state} from its position to its limit (the buffer's position is unchanged). */
    public static void write(final ExclusivePublication publication, final ByteBuffer state, final IdleStrategy idle)
    {
        final int length = state.remaining();
        final java.util.zip.CRC32C crc = new java.util.zip.CRC32C();
        crc.update(state.duplicate());
        final UnsafeBuffer header = new UnsafeBuffer(new byte[HEADER_LENGTH]);
        header.putInt(0, MAGIC, ByteOrder.LITTLE_ENDIAN);
        header.putLong(4, length, ByteOrder.LITTLE_ENDIAN);
        header.putLong(12, crc.getValue(), ByteOrder.LITTLE_ENDIAN);
        offer(publication, header, 0, HEADER_LENGTH, idle);

        final UnsafeBuffer body = new UnsafeBuffer(state, state.position(), length);
        final int chunk = Math.min(publication.maxPayloadLength(), 1 << 20);
        for (int offset = 0; offset < length; offset += chunk)
        {
            offer(publication, body, offset, Math.min(chunk, length - offset), idle);
        }
    }

    private static void offer(
        final ExclusivePublication publication, final DirectBuffer buffer, final int offset, final int length,
        final IdleStrategy idle)
    {
        idle.reset();
        long result;
        while ((result = publication.offer(buffer, offset, length)) < 0)
        {
            if (result == io.aeron.Publication.CLOSED || result == io.aeron.Publication.MAX_POSITION_EXCEEDED)
            {
                throw new IllegalStateException("snapshot publication failed: " + result);
            }
            idle.idle();
        }
    }

    /**
     * Reads the whole snapshot from the image. Blocks (idling) until it is complete.
     *
     * @throws IllegalStateException when the image ends early, or the bytes fail the CRC.
     */
    public static byte[] read(final Image image, final IdleStrategy idle)
    {
        final Reader reader = new Reader();
        idle.reset();
        while (!reader.complete())
        {
            final int fragments = image.poll(reader, 64);
            if (fragments == 0)
            {
                if (image.isEndOfStream() || image.isClosed())
                {
                    throw new IllegalStateException(
                        "snapshot ended early: " + reader.received + " of " + reader.expected + " bytes");
                }
                idle.idle();
            }
        }
        return reader.finish();
    }

    static final class Reader implements FragmentHandler
    {
        long expected = -1;
        long crc;
        int received;
        // sized from the header: the bytes go straight into the array handed to the service (a
        // buffer grown by doubling copied a 15 MB snapshot ~2x over, then once more into an array)
        byte[] bytes;

        public void onFragment(final DirectBuffer buffer, final int offset, final int length,
            final io.aeron.logbuffer.Header header)
        {
            if (expected < 0)
            {
                if (length != HEADER_LENGTH || buffer.getInt(offset, ByteOrder.LITTLE_ENDIAN) != MAGIC)
                {
                    throw new IllegalStateException("snapshot has no matchx header (incompatible version?)");
                }
                final long total = buffer.getLong(offset + 4, ByteOrder.LITTLE_ENDIAN);
                if (total < 0 || total > Integer.MAX_VALUE - 8)
                {
                    throw new IllegalStateException("snapshot header gives an impossible length: " + total);
                }
                expected = total;
                crc = buffer.getLong(offset + 12, ByteOrder.LITTLE_ENDIAN);
                bytes = new byte[(int)total];
                return;
            }
            if (received + (long)length > expected)
            {
                throw new IllegalStateException("snapshot longer than its header says: more than " + expected + " bytes");
            }
            buffer.getBytes(offset, bytes, received, length);
            received += length;
        }

        boolean complete()
        {
            return expected >= 0 && received >= expected;
        }

        byte[] finish()
        {
            if (received != expected)
            {
                throw new IllegalStateException("snapshot length mismatch: " + received + " != " + expected);
            }
            final java.util.zip.CRC32C check = new java.util.zip.CRC32C();
            check.update(bytes, 0, bytes.length);
            if (check.getValue() != crc)
            {
                throw new IllegalStateException("snapshot CRC mismatch: corrupt snapshot");
            }
            return bytes;
        }
    }
}
