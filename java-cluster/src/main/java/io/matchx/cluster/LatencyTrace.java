package io.matchx.cluster;

import io.aeron.cluster.MillisecondClusterClock;
import io.aeron.cluster.service.ClusterClock;
import org.agrona.concurrent.IdleStrategy;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.ByteOrder;
import java.nio.MappedByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.concurrent.atomic.AtomicInteger;

/**
 * Time stamps of one round trip's stages, for bench/rtt_breakdown.py (issue #20): off unless the
 * environment names a directory in {@code MATCHX_TRACE_DIR}. When off, {@link #mark} is a test of
 * a static final field, which the JIT folds away: the shipped hot path does not change.
 *
 * <p>When on, each process appends {@code int64 System.nanoTime(), int32 stage, int32 thread}
 * records (little-endian) to {@code DIR/PID.trace}, a memory-mapped file: the records survive a
 * SIGTERM or SIGKILL of the process (the page cache holds them), so members need no shutdown
 * hook. {@code System.nanoTime()} is CLOCK_MONOTONIC on Linux, the clock Python's
 * {@code time.perf_counter_ns()} reads too, so the stamps of every process on the machine (Java
 * and Python, which marks through {@link #mark} as well) lie on one time line.
 */
public final class LatencyTrace
{
    public static final String ENV = "MATCHX_TRACE_DIR";
    public static final boolean ENABLED = null != System.getenv(ENV) && !System.getenv(ENV).isEmpty();
    public static final int RECORD_LENGTH = 16;
    /** 4 M records (64 MB, sparse): far more than a breakdown run writes. */
    private static final int CAPACITY = 4 << 20;

    // stages (bench/rtt_breakdown.py names them)
    public static final int SERVICE_ENTRY = 1;
    public static final int SERVICE_HANDLER_RETURNED = 2;
    public static final int SERVICE_OFFERED = 3;
    /** The leader's consensus module appends an ingress message to the log (see {@link #ingressClock}). */
    public static final int CM_APPEND = 4;
    public static final int CLIENT_OFFERED = 11;
    public static final int CLIENT_EGRESS = 12;
    public static final int FLOOR_SERVICE_ENTRY = 21;
    public static final int FLOOR_SERVICE_OFFERED = 22;
    public static final int FLOOR_CLIENT_SEND = 31;
    public static final int FLOOR_CLIENT_OFFERED = 32;
    public static final int FLOOR_CLIENT_EGRESS = 33;
    // stamped from Python (pyengine.jvm.trace)
    public static final int PY_CLIENT_SUBMIT = 100;
    public static final int PY_CLIENT_RECEIVED = 103;
    public static final int PY_CLIENT_RESOLVE = 104;
    public static final int PY_CLIENT_WOKEN = 105;
    public static final int PY_SERVICE_ENTRY = 111;
    public static final int PY_SERVICE_EXIT = 112;

    // per agent thread: its duty cycle has just begun (its idle strategy ran); see ingressClock
    private static final ThreadLocal<boolean[]> CYCLE_BEGUN = ThreadLocal.withInitial(() -> new boolean[1]);
    private static final MappedByteBuffer BUFFER = ENABLED ? open() : null;
    private static final AtomicInteger NEXT = new AtomicInteger();

    private LatencyTrace()
    {
    }

    private static MappedByteBuffer open()
    {
        final Path file = Path.of(System.getenv(ENV), ProcessHandle.current().pid() + ".trace");
        try (FileChannel channel = FileChannel.open(
            file, StandardOpenOption.CREATE, StandardOpenOption.READ, StandardOpenOption.WRITE))
        {
            final MappedByteBuffer buffer = channel.map(FileChannel.MapMode.READ_WRITE, 0, (long)CAPACITY * RECORD_LENGTH);
            buffer.order(ByteOrder.LITTLE_ENDIAN);
            return buffer;
        }
        catch (final IOException ex)
        {
            throw new UncheckedIOException(ex);
        }
    }

    /** Stamps {@code stage} now, on the calling thread (nothing when tracing is off). */
    public static void mark(final int stage)
    {
        if (!ENABLED)
        {
            return;
        }
        final long now = System.nanoTime();
        final int i = NEXT.getAndIncrement();
        if (i < CAPACITY)
        {
            final int at = i * RECORD_LENGTH;
            BUFFER.putInt(at + 8, stage);
            BUFFER.putInt(at + 12, (int)Thread.currentThread().getId());
            BUFFER.putLong(at, now); // last: a reader takes a record with a time stamp as whole
        }
    }

    /**
     * The consensus module's clock, stamping {@link #CM_APPEND}: the module reads the clock once at
     * the top of each duty cycle and once more for each ingress message it appends to the log
     * (ConsensusModuleAgent.onIngressMessage), so every read but the first of a cycle is stamped.
     * A cycle's beginning is known from the agent's idle strategy ({@link #cycleMarking}).
     */
    public static ClusterClock ingressClock()
    {
        final ClusterClock clock = new MillisecondClusterClock();
        return new ClusterClock()
        {
            public long time()
            {
                final long time = clock.time();
                final boolean[] begun = CYCLE_BEGUN.get();
                if (begun[0])
                {
                    begun[0] = false;
                }
                else
                {
                    mark(CM_APPEND);
                }
                return time;
            }

            public long timeNanos()
            {
                return clock.timeNanos();
            }

            public long timeMicros()
            {
                return clock.timeMicros();
            }

            public long timeMillis()
            {
                return clock.timeMillis();
            }

            public long convertToNanos(final long time)
            {
                return clock.convertToNanos(time);
            }
        };
    }

    /** {@code inner}, noting on its thread that a duty cycle ended (for {@link #ingressClock}). */
    public static IdleStrategy cycleMarking(final IdleStrategy inner)
    {
        return new DelegatingIdleStrategy(inner)
        {
            public void idle(final int workCount)
            {
                CYCLE_BEGUN.get()[0] = true;
                inner.idle(workCount);
            }
        };
    }
}
