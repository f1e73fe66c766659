package io.matchx.cluster.bench;

import io.aeron.ExclusivePublication;
import io.aeron.Image;
import io.aeron.cluster.codecs.CloseReason;
import io.aeron.cluster.service.ClientSession;
import io.aeron.cluster.service.Cluster;
import io.aeron.cluster.service.ClusteredService;
import io.aeron.logbuffer.Header;
import io.matchx.cluster.LatencyTrace;
import io.matchx.cluster.MemberNode;
import io.matchx.cluster.ShutdownLatch;
import org.agrona.DirectBuffer;
import org.agrona.concurrent.IdleStrategy;

import java.io.FileInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.util.Properties;

/**
 * The floor of bench/latency.py: a member whose service only echoes each message back to its
 * session, started with exactly the contexts, ports and idle strategies of a matchx member
 * ({@link MemberNode#launchBare}). What a round trip costs here is what Aeron costs on the
 * machine; ours divided by this says what Python, JPype and our protocol add.
 *
 * <pre>java -cp matchx-cluster.jar io.matchx.cluster.bench.EchoFloor member.properties</pre>
 *
 * The properties are a member's (pyengine.node.settings.ClusterLayout.member_properties). The
 * process runs until SIGTERM. The client side is {@link EchoFloorClient}.
 */
public final class EchoFloor implements ClusteredService
{
    /** As MatchService: bounded retries of a back-pressured reply, a slow client must not stall the log. */
    private static final int MAX_OFFER_ATTEMPTS = 16;
    private IdleStrategy idle;

    public static void main(final String[] args) throws IOException, InterruptedException
    {
        if (args.length != 1)
        {
            System.err.println("usage: EchoFloor MEMBER_PROPERTIES_FILE");
            System.exit(2);
        }
        final Properties properties = new Properties();
        try (InputStream in = new FileInputStream(args[0]))
        {
            properties.load(in);
        }
        final ShutdownLatch latch = new ShutdownLatch();
        try (AutoCloseable member = MemberNode.launchBare(properties, new EchoFloor()))
        {
            System.out.println("{\"event\": \"started\"}");
            System.out.flush();
            latch.await();
        }
        catch (final Exception ex)
        {
            ex.printStackTrace(System.err);
            System.exit(1);
        }
    }

    public void onStart(final Cluster cluster, final Image snapshotImage)
    {
        idle = cluster.idleStrategy();
    }

    public void onSessionOpen(final ClientSession session, final long timestamp)
    {
    }

    public void onSessionClose(final ClientSession session, final long timestamp, final CloseReason closeReason)
    {
    }

    public void onSessionMessage(
        final ClientSession session,
        final long timestamp,
        final DirectBuffer buffer,
        final int offset,
        final int length,
        final Header header)
    {
        LatencyTrace.mark(LatencyTrace.FLOOR_SERVICE_ENTRY);
        // a follower's session offer sends nothing and succeeds, as in MatchService
        for (int i = 0; i < MAX_OFFER_ATTEMPTS; i++)
        {
            if (session.offer(buffer, offset, length) > 0)
            {
                LatencyTrace.mark(LatencyTrace.FLOOR_SERVICE_OFFERED);
                return;
            }
            idle.idle();
        }
    }

    public void onTimerEvent(final long correlationId, final long timestamp)
    {
    }

    public void onTakeSnapshot(final ExclusivePublication snapshotPublication)
    {
    }

    public void onRoleChange(final Cluster.Role newRole)
    {
    }

    public void onTerminate(final Cluster cluster)
    {
    }
}
