package io.matchx.cluster;

import org.agrona.concurrent.UnsafeBuffer;
import org.junit.jupiter.api.Test;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

class HandoverTest
{
    @Test
    void theLowestSurvivingIdNominatesAtOnceTheOtherHalfAnElectionTimeoutLater()
    {
        assertEquals(1, NominationOrder.preferred(0, 3));
        assertEquals(0, NominationOrder.preferred(1, 3));
        assertEquals(0, NominationOrder.preferred(2, 3));
        assertEquals(-1, NominationOrder.preferred(-1, 3));
        final int[] leader = { 1 };
        assertEquals(0.0, new NominationOrder(0, 3, () -> leader[0]).nextDouble());
        assertEquals(NominationOrder.LATER, new NominationOrder(2, 3, () -> leader[0]).nextDouble());
        // no leader seen yet (a fresh start): Aeron's random spread
        leader[0] = -1;
        final double d = new NominationOrder(0, 3, () -> leader[0]).nextDouble();
        assertTrue(d >= 0.0 && d < 1.0);
    }

    /** The SDK's hold ack (pyengine/wire/protocol.py encode_hold_ack): 'MX', 1, 6, client id, count 0. */
    @Test
    void aHoldAckIsRecognisedAndACommandIsNot()
    {
        final ByteBuffer bb = ByteBuffer.allocate(14).order(ByteOrder.LITTLE_ENDIAN);
        bb.put((byte)'M').put((byte)'X').put((byte)1).put(MatchService.KIND_HOLD_ACK).putLong(12345L).putShort((short)0);
        final UnsafeBuffer ack = new UnsafeBuffer(bb.array());
        assertTrue(MatchService.isHoldAck(ack, 0, 14));
        assertFalse(MatchService.isHoldAck(ack, 0, 13));
        ack.putByte(3, (byte)1);  // an ordinary request with no commands
        assertFalse(MatchService.isHoldAck(ack, 0, 14));
    }

    @Test
    void aToldSessionIsWaitedForUpToTheBoundEvenWhenNoCommandComes()
    {
        final long ms = 1_000_000L;
        assertEquals("every told session acked", Handover.drainEnd(1, 1, 0, 5 * ms));
        // told, not acked, quiet for 60 ms: its ack is on its way (the CI failure of 7 Dec)
        assertNull(Handover.drainEnd(1, 0, 60 * ms, 61 * ms));
        assertNull(Handover.drainEnd(2, 1, 90 * ms, 95 * ms));
        assertEquals("bound of " + Handover.MAX_DRAIN_MS + " ms",
            Handover.drainEnd(1, 0, 60 * ms, Handover.MAX_DRAIN_MS * ms));
        // nobody told (no session sent a command since the hold began): the quiet rule
        assertEquals("no command for " + Handover.QUIET_MS + " ms",
            Handover.drainEnd(0, 0, Handover.QUIET_MS * ms, Handover.QUIET_MS * ms));
        assertNull(Handover.drainEnd(0, 0, 10 * ms, 10 * ms));
    }
}
