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

    @Test
    void echoesThroughTheReplicatedLog() throws Exception
    {
        final int ingress = freePort();
        final Properties p = memberProperties(ingress);

        final EchoHandler handler = new EchoHandler();
        final MatchService service = MemberNode.newService(p, handler);
        handler.service = service;
        node = MemberNode.launch(p, service);

        client = new ClusterClient("0=127.0.0.1:" + ingress, aeronDir + "-client", "127.0.0.1", 5000, 5000, null);
        final long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(30);
        while (!client.isConnected() && System.nanoTime() < deadline)
        {
            Thread.sleep(20);
        }
        assertTrue(client.isConnected(), "client connected");
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
