package io.matchx.cluster;

import org.agrona.concurrent.UnsafeBuffer;
import org.junit.jupiter.api.Test;

import java.nio.ByteOrder;
import java.util.ArrayList;
import java.util.List;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

class ReplyFramesTest
{
    @Test
    void readsEveryFrame()
    {
        final UnsafeBuffer buffer = new UnsafeBuffer(new byte[64]);
        buffer.putLong(0, 7L, ByteOrder.LITTLE_ENDIAN);
        buffer.putInt(8, 3, ByteOrder.LITTLE_ENDIAN);
        buffer.putBytes(12, new byte[]{ 1, 2, 3 });
        buffer.putLong(15, 9L, ByteOrder.LITTLE_ENDIAN);
        buffer.putInt(23, 0, ByteOrder.LITTLE_ENDIAN);
        final List<long[]> seen = new ArrayList<>();
        final int frames = ReplyFrames.forEach(buffer, 27, (id, off, len) -> seen.add(new long[]{ id, off, len }));
        assertEquals(2, frames);
        assertEquals(7L, seen.get(0)[0]);
        assertEquals(12L, seen.get(0)[1]);
        assertEquals(3L, seen.get(0)[2]);
        assertEquals(9L, seen.get(1)[0]);
    }

    @Test
    void refusesFramesThatDoNotAddUp()
    {
        final UnsafeBuffer buffer = new UnsafeBuffer(new byte[64]);
        buffer.putLong(0, 7L, ByteOrder.LITTLE_ENDIAN);
        buffer.putInt(8, 50, ByteOrder.LITTLE_ENDIAN);
        assertThrows(IllegalStateException.class, () -> ReplyFrames.forEach(buffer, 20, (id, off, len) -> { }));
        assertThrows(IllegalStateException.class, () -> ReplyFrames.forEach(buffer, 5, (id, off, len) -> { }));
    }
}
