package io.matchx.cluster;

import io.matchx.cluster.client.ClusterClient;

import org.agrona.IoUtil;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.io.File;
import java.net.DatagramSocket;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Properties;
import java.util.concurrent.TimeUnit;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * A real one-member cluster with a Java echo handler, reached through {@link ClusterClient}:
 * the shim's message path, reply frames, status file and the client glue, without Python.
 */
class SingleMemberClusterTest
{
    @TempDir
    Path dir;

    private MemberNode node;
    private ClusterClient client;
    private String aeronDir;

    /** Echoes the request back, prefixed with the session id, to the sending session. */
    static class EchoHandler implements ServiceHandler
    {
        MatchService service;
        volatile int messages;
        volatile boolean started;
        volatile int inStep;

        public void onStart(final int memberId, final byte[] snapshot)
        {
            started = true;
        }

        public int onSessionMessage(final long sessionId, final long timestamp, final long position, final int length)
        {
            messages++;
            final ByteBuffer in = service.inputBuffer();
            final ByteBuffer out = service.outputBuffer().order(ByteOrder.LITTLE_ENDIAN);
            out.putLong(0, sessionId);
            out.putInt(8, length);
            for (int i = 0; i < length; i++)
            {
                out.put(12 + i, in.get(i));
            }
            return 12 + length;
        }

        public int onSessionMessages(final int count, final int length)
        {
            return 0;
        }

        public void onSessionOpen(final long sessionId, final long timestamp, final byte[] principal)
        {
        }

        public void onSessionClose(final long sessionId, final long timestamp)
        {
        }

        public java.nio.ByteBuffer onTakeSnapshot(final long position)
        {
            return java.nio.ByteBuffer.allocate(0);
        }

        public void onSnapshotWritten()
        {
        }

        public void onInStep()
        {
            inStep++;
        }

        public void onRoleChange(final int role)
        {
        }

        public void onTerminate()
        {
        }
    }

    static int freePort() throws Exception
    {
        try (DatagramSocket socket = new DatagramSocket(0))
        {
            return socket.getLocalPort();
        }
    }

    @AfterEach
    void tearDown()
    {
        if (null != client)
        {
            client.close();
        }
        if (null != node)
        {
            node.close();
        }
        if (null != aeronDir)
        {
            IoUtil.delete(new File(aeronDir), true);
        }
    }

    private Properties memberProperties(final int ingress) throws Exception
    {
        final String members = "0,127.0.0.1:" + ingress + ",127.0.0.1:" + freePort() + ",127.0.0.1:" + freePort() +
            ",127.0.0.1:" + freePort() + ",127.0.0.1:" + freePort();
        aeronDir = "/dev/shm/matchx-junit-" + ProcessHandle.current().pid();
        final Properties p = new Properties();
        p.setProperty("member.id", "0");
        p.setProperty("cluster.members", members);
        p.setProperty("host", "127.0.0.1");
        p.setProperty("archive.port", members.substring(members.lastIndexOf(':') + 1));
        p.setProperty("base.dir", dir.toString());
        p.setProperty("aeron.dir", aeronDir);
        return p;
    }

    /** Snapshots a fixed pseudo-random state; records what it was started from. */
    static final class StateHandler extends EchoHandler
    {
        final byte[] state;
        volatile byte[] startedFrom;

        StateHandler(final int length)
        {
            state = new byte[length];
            new java.util.Random(17).nextBytes(state);
        }

        public void onStart(final int memberId, final byte[] snapshot)
        {
            startedFrom = snapshot;
            super.onStart(memberId, snapshot);
        }

        public java.nio.ByteBuffer onTakeSnapshot(final long position)
        {
            final ByteBuffer direct = ByteBuffer.allocateDirect(state.length);
            direct.put(state).flip();
            return direct;
        }
    }

    @Test
    void aSnapshotLargerThanTheLogTermGoesThroughItsOwnChannelAndLoadsExactly() throws Exception
    {
        final Properties p = memberProperties(freePort());
        // the service's snapshot and its replay at start go through IPC channels with a term of
        // their own (16 MB by default), not the driver's 1 MB IPC term
        final MemberNode.Contexts ctx = MemberNode.newContexts(
            MemberSettings.from(p), (io.aeron.cluster.service.ClusteredService)null, Throwable::printStackTrace);
        assertTrue(ctx.container.snapshotChannel().contains("term-length=" + (16 << 20)), ctx.container.snapshotChannel());
        assertTrue(ctx.container.replayChannel().contains("term-length=" + (16 << 20)), ctx.container.replayChannel());

        final StateHandler handler = new StateHandler(20 << 20);  // 20 of the log's 1 MB terms, more than one window of its own
        final MatchService service = MemberNode.newService(p, handler);
        handler.service = service;
        node = MemberNode.launch(p, service);
        final long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(60);
        while (service.role() != 2 && System.nanoTime() < deadline)
        {
            Thread.sleep(20);
        }
        assertNull(handler.startedFrom, "a fresh member starts empty");
        while (!node.takeSnapshot() && System.nanoTime() < deadline)
        {
            Thread.sleep(20);
        }
        while (service.counts().snapshots < 1 && System.nanoTime() < deadline)
        {
            Thread.sleep(20);
        }
        assertEquals(1, service.counts().snapshots, "snapshot taken");
        node.close();
        node = null;

        final StateHandler restarted = new StateHandler(0);
        final MatchService again = MemberNode.newService(p, restarted);
        restarted.service = again;
        node = MemberNode.launch(p, again);
        while (null == restarted.startedFrom && System.nanoTime() < deadline)
        {
            Thread.sleep(20);
        }
        assertArrayEquals(handler.state, restarted.startedFrom, "the restarted member loads the snapshot's exact bytes");
    }

    /** Launches the member with this handler. */
    private MatchService launch(final Properties p, final EchoHandler handler)
    {
        final MatchService service = MemberNode.newService(p, handler);
        handler.service = service;
        node = MemberNode.launch(p, service);
        return service;
    }

    /** Launches a member on fresh ports with this handler and connects the client; its properties. */
    private Properties launchAndConnect(final EchoHandler handler, final long deadline) throws Exception
    {
        final int ingress = freePort();
        final Properties p = memberProperties(ingress);
        launch(p, handler);
        client = new ClusterClient("0=127.0.0.1:" + ingress, aeronDir + "-client", "127.0.0.1", 5000, 5000, null, false);
        while (!client.isConnected() && System.nanoTime() < deadline)
        {
            Thread.sleep(20);
        }
        assertTrue(client.isConnected(), "client connected");
        return p;
    }

    /** One log message as the service handed it over: what a replay must hand over again. */
    record Delivered(long sessionId, long timestamp, long position, String body)
    {
    }

    /** Records every message it is handed, whether one per crossing or gathered. */
    static final class RecordingHandler extends EchoHandler
    {
        final java.util.List<Delivered> delivered = new java.util.concurrent.CopyOnWriteArrayList<>();
        volatile int singleCrossings;
        volatile int gatheredCrossings;
        volatile int largestGathering;

        public int onSessionMessage(final long sessionId, final long timestamp, final long position, final int length)
        {
            singleCrossings++;
            final byte[] body = new byte[length];
            service.inputBuffer().get(0, body);
            delivered.add(new Delivered(sessionId, timestamp, position, new String(body, StandardCharsets.US_ASCII)));
            return super.onSessionMessage(sessionId, timestamp, position, length);
        }

        public int onSessionMessages(final int count, final int length)
        {
            gatheredCrossings++;
            largestGathering = Math.max(largestGathering, count);
            final ByteBuffer in = service.inputBuffer().duplicate().order(ByteOrder.LITTLE_ENDIAN);
            int offset = 0;
            for (int i = 0; i < count; i++)
            {
                final long sessionId = in.getLong(offset);
                final long timestamp = in.getLong(offset + 8);
                final long position = in.getLong(offset + 16);
                final int size = in.getInt(offset + 24);
                final byte[] body = new byte[size];
                in.get(offset + MatchService.GATHERED_HEADER_LENGTH, body);
                delivered.add(new Delivered(sessionId, timestamp, position, new String(body, StandardCharsets.US_ASCII)));
                offset += MatchService.GATHERED_HEADER_LENGTH + size;
            }
            assertEquals(length, offset, "the records fill exactly the length handed over");
            return count;
        }
    }

    @Test
    void aReplayAtStartHandsTheLogOverInGatheredCrossingsMessageForMessage() throws Exception
    {
        final RecordingHandler first = new RecordingHandler();
        final Properties p = launchAndConnect(first, System.nanoTime() + TimeUnit.SECONDS.toNanos(60));
        final long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(60);
        final int messages = 400;
        for (int i = 0; i < messages; i++)
        {
            final byte[] request = ("message " + i + " " + "x".repeat(i % 37)).getBytes(StandardCharsets.US_ASCII);
            while (client.offer(request) < 0 && System.nanoTime() < deadline)
            {
                client.poll(1);
            }
        }
        while (first.delivered.size() < messages && System.nanoTime() < deadline)
        {
            client.poll(10);
        }
        assertEquals(messages, first.delivered.size());
        // the live leader: one crossing per message, replies sent
        assertEquals(messages, first.singleCrossings);
        assertEquals(0, first.gatheredCrossings);
        client.close();
        client = null;
        node.close();
        node = null;

        // no snapshot: the restarted member replays its whole log, as a follower would (Aeron's
        // LogReplay joins the service as FOLLOWER), so in gathered crossings
        final RecordingHandler restarted = new RecordingHandler();
        final MatchService again = launch(p, restarted);
        while (restarted.delivered.size() < messages && System.nanoTime() < deadline)
        {
            Thread.sleep(20);
        }
        Thread.sleep(200);
        assertEquals(first.delivered, restarted.delivered, "the same messages, order, positions and timestamps");
        assertEquals(0, restarted.singleCrossings);
        assertTrue(restarted.largestGathering > 1, "messages of one poll gathered: " + restarted.largestGathering);
        assertTrue(restarted.gatheredCrossings < messages,
            restarted.gatheredCrossings + " crossings for " + messages + " messages");
        assertEquals(restarted.gatheredCrossings, again.gatheredCrossings());
    }

    @Test
    void echoesThroughTheReplicatedLog() throws Exception
    {
        final EchoHandler handler = new EchoHandler();
        final long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(30);
        launchAndConnect(handler, deadline);
        assertTrue(handler.started);
        // the service hears once, on its own thread, that the member's first election closed
        while (handler.inStep == 0 && System.nanoTime() < deadline)
        {
            Thread.sleep(20);
        }
        Thread.sleep(100);
        assertEquals(1, handler.inStep);

        final byte[] request = "hello cluster".getBytes(StandardCharsets.US_ASCII);
        long result;
        while ((result = client.offer(request)) < 0 && System.nanoTime() < deadline)
        {
            Thread.sleep(5);
        }
        assertTrue(result > 0, "offer accepted");

        byte[] echoed = null;
        while (null == echoed && System.nanoTime() < deadline)
        {
            final byte[] events = client.poll(100);
            if (null == events)
            {
                continue;
            }
            final ByteBuffer bb = ByteBuffer.wrap(events).order(ByteOrder.LITTLE_ENDIAN);
            while (bb.remaining() > 0)
            {
                final byte kind = bb.get();
                final byte[] body = new byte[bb.getInt()];
                bb.get(body);
                if (kind == ClusterClient.EVENT_MESSAGE)
                {
                    echoed = body;
                }
            }
        }
        assertNotNull(echoed, "echo received");
        assertArrayEquals(request, echoed);
        assertEquals(1, handler.messages);

        final Path status = dir.resolve("status.json");
        while (!Files.exists(status) && System.nanoTime() < deadline)
        {
            Thread.sleep(20);
        }
        final String json = Files.readString(status);
        assertTrue(json.contains("\"role\":\"leader\""), json);
    }
}
