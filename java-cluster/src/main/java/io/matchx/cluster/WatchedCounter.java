package io.matchx.cluster;

import io.aeron.Counter;

import java.util.function.BooleanSupplier;
import java.util.function.LongSupplier;

/**
 * A member's Aeron counter read by our own watcher threads (election timing, start phases),
 * closed by the member before its Aeron client closes.
 *
 * <p>Why: a counter's value lives in the driver's counters file as the member's Aeron client
 * maps it; when a worker removes one member, that client closes and unmaps it while the driver
 * (shared by the worker's other members) runs on. A watcher that checked {@link Counter#isClosed()}
 * and was then descheduled read unmapped memory: the worker's JVM died with SIGSEGV in
 * {@code AtomicCounter.get()} on thread matchx-election-timing (seen under load when a partition
 * was retired, hs_err files of 7 Dec). Reads and the close share one lock, so no read runs once
 * {@link #close()} has returned.
 */
final class WatchedCounter implements AutoCloseable
{
    /** What {@link #get()} returns once closed. */
    static final long CLOSED = Long.MIN_VALUE;

    private final LongSupplier value;
    private final BooleanSupplier closedByAeron;
    private boolean closed;

    WatchedCounter(final LongSupplier value, final BooleanSupplier closedByAeron)
    {
        this.value = value;
        this.closedByAeron = closedByAeron;
    }

    static WatchedCounter of(final Counter counter)
    {
        return new WatchedCounter(counter::get, counter::isClosed);
    }

    /** The counter's value, or {@link #CLOSED} once the member closed it (or Aeron did). */
    synchronized long get()
    {
        return closed || closedByAeron.getAsBoolean() ? CLOSED : value.getAsLong();
    }

    @Override
    public synchronized void close()
    {
        closed = true;
    }
}
