package io.matchx.cluster;

import io.aeron.Aeron;
import io.aeron.Publication;
import io.aeron.driver.MediaDriver;
import io.aeron.protocol.HeaderFlyweight;
import org.agrona.CloseHelper;
import org.agrona.IoUtil;
import org.agrona.concurrent.SleepingMillisIdleStrategy;
import org.junit.jupiter.api.Test;

import java.io.File;
import java.net.InetSocketAddress;
import java.net.StandardSocketOptions;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.DatagramChannel;
import java.nio.channels.Selector;
import java.nio.channels.SelectionKey;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.concurrent.TimeUnit;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

class SetupRepeatTest
{
    @Test
    void outOfRangeIntervalsAreRefusedByName()
    {
        for (final long bad : new long[] {0, -5, SetupRepeat.MAX_MS + 1})
        {
            assertTrue(assertThrows(IllegalArgumentException.class, () -> SetupRepeat.apply(bad))
                .getMessage().contains("setup.repeat.ms"), Long.toString(bad));
        }
    }

    /**
     * A member's driver ticks and sends status messages far more often than Aeron's defaults (1 s, 200 ms):
     * at those an election's INIT, which waits for the driver to release the old log's socket, took 1-2 s
     * (bench/reports/auth_revocation_quiet_2.md against auth_revocation_driver_timer.md).
     */
    @Test
    void aMembersDriverReleasesTheOldLogWithinAnElectionStep()
    {
        final MediaDriver.Context ctx = MemberNode.newDriverContext(
            "/dev/shm/matchx-junit-unused", 64 * 1024, SetupRepeat.DEFAULT_MS, new SleepingMillisIdleStrategy(1),
            Throwable::printStackTrace);
        assertEquals(TimeUnit.MILLISECONDS.toNanos(MemberNode.DRIVER_TIMER_INTERVAL_MS), ctx.timerIntervalNs());
        assertEquals(TimeUnit.MILLISECONDS.toNanos(MemberNode.STATUS_MESSAGE_TIMEOUT_MS), ctx.statusMessageTimeoutNs());
        // five status message timeouts of draining and a tick: well inside a 1 s election step
        assertTrue(5 * MemberNode.STATUS_MESSAGE_TIMEOUT_MS + MemberNode.DRIVER_TIMER_INTERVAL_MS <= 300);
    }

    /** A member's driver heartbeats (and so ends a closed log) every 10 ms; a handover lingers 3 of those. */
    @Test
    void membersShortenTheIdleHeartbeatAndTheHandoverOutlastsIt()
    {
        SetupRepeat.apply(SetupRepeat.DEFAULT_MS);
        assertEquals(TimeUnit.MILLISECONDS.toNanos(SetupRepeat.HEARTBEAT_MS), SetupRepeat.currentHeartbeat());
        assertTrue(Handover.lingerMs() >= 3 * SetupRepeat.HEARTBEAT_MS);
    }

    /**
     * A publication nobody answers: a plain UDP socket at its endpoint sees the driver's SETUP
     * frames, and they come every ~10 ms instead of Aeron's 100.
     */
    @Test
    void aDriverRepeatsSetupAtTheSetInterval() throws Exception
    {
        assertEquals(TimeUnit.MILLISECONDS.toNanos(SetupRepeat.DEFAULT_MS), SetupRepeat.apply(SetupRepeat.DEFAULT_MS));
        final String aeronDir = "/dev/shm/matchx-junit-setup-" + ProcessHandle.current().pid();
        MediaDriver driver = null;
        Aeron aeron = null;
        try (DatagramChannel socket = DatagramChannel.open(); Selector selector = Selector.open())
        {
            socket.setOption(StandardSocketOptions.SO_REUSEADDR, false);
            socket.bind(new InetSocketAddress("127.0.0.1", 0));
            socket.configureBlocking(false);
            socket.register(selector, SelectionKey.OP_READ);
            final int port = ((InetSocketAddress)socket.getLocalAddress()).getPort();

            driver = MediaDriver.launch(MemberNode.newDriverContext(
                aeronDir, 64 * 1024, SetupRepeat.DEFAULT_MS, new SleepingMillisIdleStrategy(1), Throwable::printStackTrace));
            aeron = Aeron.connect(new Aeron.Context().aeronDirectoryName(aeronDir));
            final Publication publication = aeron.addPublication("aeron:udp?endpoint=127.0.0.1:" + port, 1001);
            assertTrue(publication.registrationId() > 0);

            final List<Long> setups = new ArrayList<>();
            final ByteBuffer frame = ByteBuffer.allocate(2048).order(ByteOrder.LITTLE_ENDIAN);
            final long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(10);
            while (setups.size() < 12 && System.nanoTime() < deadline)
            {
                selector.select(100);
                selector.selectedKeys().clear();
                frame.clear();
                while (null != socket.receive(frame))
                {
                    if (frame.position() >= HeaderFlyweight.MIN_HEADER_LENGTH &&
                        frame.getShort(HeaderFlyweight.TYPE_FIELD_OFFSET) == HeaderFlyweight.HDR_TYPE_SETUP)
                    {
                        setups.add(System.nanoTime());
                    }
                    frame.clear();
                }
            }
            assertEquals(12, setups.size(), "SETUP frames seen in 10 s");
            final long[] gapsMs = new long[setups.size() - 1];
            for (int i = 1; i < setups.size(); i++)
            {
                gapsMs[i - 1] = TimeUnit.NANOSECONDS.toMillis(setups.get(i) - setups.get(i - 1));
            }
            Arrays.sort(gapsMs);
            // Aeron's own interval never gives a gap under 100 ms; starvation only lengthens gaps
            assertTrue(gapsMs[gapsMs.length / 2] < 50, "median gap between SETUPs " + Arrays.toString(gapsMs));
        }
        finally
        {
            CloseHelper.closeAll(aeron, driver);
            IoUtil.delete(new File(aeronDir), true);
        }
    }
}
