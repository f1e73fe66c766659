package io.matchx.cluster;

import io.matchx.cluster.client.ClusterClient;

import org.agrona.IoUtil;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.io.File;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.TimeUnit;

import static io.matchx.cluster.SingleMemberClusterTest.freePort;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Two one-member clusters (ids 1 and 2) in one worker, i.e. one media driver: each client reaches
 * its own cluster's service and no message crosses over.
 */
class WorkerNodeTest
{
    @TempDir
    Path dir;

    private WorkerNode worker;
    private final List<ClusterClient> clients = new ArrayList<>();
    private final String aeronDir = "/dev/shm/matchx-junit-worker-" + ProcessHandle.current().pid();

    @AfterEach
    void tearDown()
    {
        clients.forEach(ClusterClient::close);
        if (null != worker)
        {
            worker.close();
        }
        for (int i = 0; i < clients.size(); i++)
        {
            IoUtil.delete(new File(aeronDir + "-client-" + i), true);
        }
        IoUtil.delete(new File(aeronDir), true);
    }

    private Properties member(final int clusterId, final int ingressPort) throws Exception
    {
        final int archivePort = freePort();
        final Properties p = new Properties();
        p.setProperty("cluster.id", Integer.toString(clusterId));
        p.setProperty("member.id", "0");
        p.setProperty("cluster.members", "0,127.0.0.1:" + ingressPort + ",127.0.0.1:" + freePort() +
            ",127.0.0.1:" + freePort() + ",127.0.0.1:" + freePort() + ",127.0.0.1:" + archivePort);
        p.setProperty("host", "127.0.0.1");
        p.setProperty("archive.port", Integer.toString(archivePort));
        p.setProperty("base.dir", dir.resolve("c" + clusterId).toString());
        p.setProperty("aeron.dir", aeronDir);
        p.setProperty("term.length", "65536");
        p.setProperty("ingress.term.length", "65536");
        return p;
    }

    private static byte[] echo(final ClusterClient client, final byte[] request, final long deadline) throws Exception
    {
        while (!client.isConnected() && System.nanoTime() < deadline)
        {
            Thread.sleep(20);
        }
        assertTrue(client.isConnected(), "client connected");
        long result;
        while ((result = client.offer(request)) < 0 && System.nanoTime() < deadline)
        {
            Thread.sleep(5);
        }
        assertTrue(result > 0, "offer accepted");
        while (System.nanoTime() < deadline)
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
                    return body;
                }
            }
        }
        return null;
    }

    @Test
    void membersOfTwoClustersShareOneDriver() throws Exception
    {
        final Properties workerProps = new Properties();
        workerProps.setProperty("aeron.dir", aeronDir);
        workerProps.setProperty("term.length", "65536");
        workerProps.setProperty("worker.id", "junit");
        worker = WorkerNode.launch(workerProps);

        final int[] ingress = { freePort(), freePort() };
        final SingleMemberClusterTest.EchoHandler[] handlers = new SingleMemberClusterTest.EchoHandler[2];
        for (int i = 0; i < 2; i++)
        {
            final Properties p = member(i + 1, ingress[i]);
            handlers[i] = new SingleMemberClusterTest.EchoHandler();
            handlers[i].service = MemberNode.newService(p, handlers[i]);
            worker.addMember(p, handlers[i].service);
        }
        assertEquals(2, worker.members().size());

        final Properties again = member(1, freePort());
        final IllegalArgumentException dup = assertThrows(IllegalArgumentException.class,
            () -> worker.addMember(again, MemberNode.newService(again, new SingleMemberClusterTest.EchoHandler())));
        assertTrue(dup.getMessage().contains("one member per cluster"), dup.getMessage());

        final long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(30);
        for (int i = 0; i < 2; i++)
        {
            clients.add(new ClusterClient(
                "0=127.0.0.1:" + ingress[i], aeronDir + "-client-" + i, "127.0.0.1", 5000, 5000, null, false));
        }
        for (int i = 0; i < 2; i++)
        {
            final byte[] request = ("to cluster " + (i + 1)).getBytes(StandardCharsets.US_ASCII);
            assertArrayEquals(request, echo(clients.get(i), request, deadline));
        }
        assertEquals(1, handlers[0].messages);
        assertEquals(1, handlers[1].messages);

        worker.close();
        assertFalse(new File(aeronDir).exists(), "driver directory removed on close");
    }
}
