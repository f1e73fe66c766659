package io.matchx.cluster.bench;

import io.aeron.cluster.client.AeronCluster;
import io.aeron.cluster.client.EgressListener;
import io.aeron.driver.MediaDriver;
import io.aeron.driver.ThreadingMode;
import io.aeron.logbuffer.Header;
import io.matchx.cluster.LatencyTrace;
import org.agrona.CloseHelper;
import org.agrona.DirectBuffer;
import org.agrona.concurrent.BackoffIdleStrategy;
import org.agrona.concurrent.IdleStrategy;
import org.agrona.concurrent.UnsafeBuffer;

import java.io.DataOutputStream;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.HashMap;
import java.util.Map;
import java.util.concurrent.TimeUnit;

/**
 * The floor's client (bench/latency.py): one thread that offers each command at its planned time
 * and polls egress in between, with an embedded media driver as MatchClient's. It runs the same
 * phases as the bench's Python client and reports them the same way: a line
 * {@code PHASE name begin} before, {@code PHASE name end sent answered elapsed_ns} after, and
 * each answered command's latency from its planned send time (ns, int64 little-endian) in
 * {@code OUT/name.lat}. One at a time ({@code rtt}) sends the next command when the answer of the
 * one before arrives; open loop ({@code open-R}) sends at R per second whatever comes back.
 */
public final class EchoFloorClient implements EgressListener
{
    /** As MatchClient's resend_after_s: an unanswered command is sent again after this quiet time. */
    private static final long RESEND_AFTER_NS = TimeUnit.SECONDS.toNanos(1);
    private long[] answeredAt = new long[0];
    private int answered;
    private long lastAnswerNs;
    // set by a new leader: what the old one had not answered is sent again, as MatchClient does
    private boolean resendDue;

    public void onNewLeader(
        final long clusterSessionId, final long leadershipTermId, final int leaderMemberId, final String ingressEndpoints)
    {
        resendDue = true;
    }

    public void onMessage(
        final long clusterSessionId,
        final long timestamp,
        final DirectBuffer buffer,
        final int offset,
        final int length,
        final Header header)
    {
        LatencyTrace.mark(LatencyTrace.FLOOR_CLIENT_EGRESS);
        final int seq = (int)buffer.getLong(offset, ByteOrder.LITTLE_ENDIAN);
        if (seq >= 0 && seq < answeredAt.length && 0 == answeredAt[seq])
        {
            answeredAt[seq] = System.nanoTime();
            lastAnswerNs = answeredAt[seq];
            answered++;
        }
    }

    public static void main(final String[] argv) throws IOException, InterruptedException
    {
        final Map<String, String> a = new HashMap<>();
        for (int i = 0; i + 1 < argv.length; i += 2)
        {
            a.put(argv[i].replaceFirst("^--", ""), argv[i + 1]);
        }
        final long parkNs = TimeUnit.MICROSECONDS.toNanos(Long.parseLong(a.getOrDefault("park-us", "500")));
        final Path out = Path.of(a.get("out"));
        final int size = Integer.parseInt(a.getOrDefault("size", "128"));
        final long drainNs = TimeUnit.SECONDS.toNanos(Long.parseLong(a.getOrDefault("drain-s", "30")));
        final double durationS = Double.parseDouble(a.getOrDefault("duration-s", "5"));

        final MediaDriver driver = MediaDriver.launchEmbedded(new MediaDriver.Context()
            .aeronDirectoryName(a.get("aeron-dir"))
            .dirDeleteOnStart(true)
            .dirDeleteOnShutdown(true)
            .threadingMode(ThreadingMode.SHARED)
            .sharedIdleStrategy(new BackoffIdleStrategy(10, 10, 1_000, parkNs))
            .termBufferSparseFile(true)
            .publicationTermBufferLength(1 << 20)
            .ipcTermBufferLength(64 * 1024));
        final EchoFloorClient client = new EchoFloorClient();
        AeronCluster cluster = null;
        try
        {
            cluster = connect(a.get("endpoints"), driver.aeronDirectoryName(), client, parkNs, 120);
            System.out.println("CONNECTED " + cluster.leaderMemberId());
            System.out.flush();
            final IdleStrategy idle = new BackoffIdleStrategy(10, 10, 1_000, parkNs);
            final Sender sender = new Sender(cluster, idle, size);
            client.idlePhase(sender, Double.parseDouble(a.getOrDefault("idle-s", "0")));
            client.phase(sender, out, "warmup", Integer.parseInt(a.getOrDefault("warmup", "300")), 0, drainNs);
            client.phase(sender, out, "rtt", Integer.parseInt(a.getOrDefault("rtt", "2000")), 0, drainNs);
            for (final String r : a.getOrDefault("rates", "").split(","))
            {
                if (!r.isBlank())
                {
                    final int rate = Integer.parseInt(r.trim());
                    client.phase(sender, out, "open-" + rate, (int)Math.round(rate * durationS),
                        1_000_000_000L / rate, drainNs);
                }
            }
        }
        finally
        {
            CloseHelper.closeAll(cluster, driver);
        }
    }

    private static AeronCluster connect(
        final String endpoints, final String aeronDir, final EgressListener listener, final long parkNs, final int attempts)
    {
        RuntimeException last = null;
        for (int i = 0; i < attempts; i++)
        {
            try
            {
                return AeronCluster.connect(new AeronCluster.Context()
                    .aeronDirectoryName(aeronDir)
                    .ingressEndpoints(endpoints)
                    .ingressChannel("aeron:udp?term-length=1m")
                    .egressChannel("aeron:udp?endpoint=127.0.0.1:0")
                    .messageTimeoutNs(TimeUnit.SECONDS.toNanos(2))
                    .idleStrategy(new BackoffIdleStrategy(10, 10, 1_000, parkNs))
                    .egressListener(listener));
            }
            catch (final RuntimeException ex)
            {
                last = ex; // the members are still electing a leader
            }
        }
        throw last;
    }

    /** Offers one command, polling egress while back pressured so answers keep flowing. */
    private static final class Sender
    {
        final AeronCluster cluster;
        final IdleStrategy idle;
        final UnsafeBuffer buffer;
        final int size;
        long nextKeepAliveNs;

        Sender(final AeronCluster cluster, final IdleStrategy idle, final int size)
        {
            this.cluster = cluster;
            this.idle = idle;
            this.size = size;
            buffer = new UnsafeBuffer(ByteBuffer.allocateDirect(Math.max(size, 8)));
        }

        void send(final int seq)
        {
            LatencyTrace.mark(LatencyTrace.FLOOR_CLIENT_SEND);
            buffer.putLong(0, seq, ByteOrder.LITTLE_ENDIAN);
            while (cluster.offer(buffer, 0, size) < 0)
            {
                idle.idle(cluster.pollEgress());
            }
            LatencyTrace.mark(LatencyTrace.FLOOR_CLIENT_OFFERED);
        }

        int poll(final long nowNs)
        {
            if (nowNs >= nextKeepAliveNs)
            {
                cluster.sendKeepAlive();
                nextKeepAliveNs = nowNs + TimeUnit.SECONDS.toNanos(1);
            }
            return cluster.pollEgress();
        }
    }

    private void idlePhase(final Sender sender, final double seconds)
    {
        if (seconds <= 0)
        {
            return;
        }
        System.out.println("PHASE idle begin");
        System.out.flush();
        final long start = System.nanoTime();
        final long end = start + (long)(seconds * 1e9);
        long now;
        while ((now = System.nanoTime()) < end)
        {
            sender.idle.idle(sender.poll(now));
        }
        System.out.println("PHASE idle end 0 0 " + (System.nanoTime() - start));
        System.out.flush();
    }

    private void phase(
        final Sender sender, final Path out, final String name, final int count, final long intervalNs, final long drainNs)
        throws IOException, InterruptedException
    {
        answeredAt = new long[count];
        answered = 0;
        resendDue = false;
        final long[] planned = new long[count];
        System.out.println("PHASE " + name + " begin");
        System.out.flush();
        final long start = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(1);
        long deadline = Long.MAX_VALUE;
        int sent = 0;
        while (answered < count)
        {
            final long now = System.nanoTime();
            if (now > deadline)
            {
                break;
            }
            int work = 0;
            if (0 == intervalNs)
            {
                if (sent == answered && sent < count)
                {
                    planned[sent] = now;
                    sender.send(sent++);
                    work++;
                }
            }
            else
            {
                while (sent < count && start + sent * intervalNs <= now)
                {
                    planned[sent] = start + sent * intervalNs;
                    sender.send(sent++);
                    work++;
                }
            }
            if (sent == count && Long.MAX_VALUE == deadline)
            {
                deadline = now + drainNs;
            }
            work += sender.poll(now);
            if (resendDue || (sent > answered && now - Math.max(lastAnswerNs, planned[sent - 1]) > RESEND_AFTER_NS))
            {
                resendDue = false;
                lastAnswerNs = now;
                for (int i = 0; i < sent; i++)
                {
                    if (0 == answeredAt[i])
                    {
                        sender.send(i);
                    }
                }
            }
            sender.idle.idle(work);
        }
        final long elapsed = System.nanoTime() - start;
        try (DataOutputStream lat = new DataOutputStream(Files.newOutputStream(out.resolve(name + ".lat"))))
        {
            final ByteBuffer bb = ByteBuffer.allocate(8).order(ByteOrder.LITTLE_ENDIAN);
            for (int i = 0; i < sent; i++)
            {
                if (0 != answeredAt[i])
                {
                    bb.clear();
                    bb.putLong(answeredAt[i] - planned[i]);
                    lat.write(bb.array());
                }
            }
        }
        System.out.println("PHASE " + name + " end " + sent + " " + answered + " " + elapsed);
        System.out.flush();
        Thread.sleep(500);
    }
}
