package io.matchx.cluster;

import org.junit.jupiter.api.Test;

import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.locks.LockSupport;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;

class WatchedCounterTest
{
    @Test
    void readsTheValueUntilClosedThenClosed()
    {
        final AtomicBoolean aeronClosed = new AtomicBoolean();
        final WatchedCounter counter = new WatchedCounter(() -> 17, aeronClosed::get);
        assertEquals(17, counter.get());
        aeronClosed.set(true);
        assertEquals(WatchedCounter.CLOSED, counter.get());
        aeronClosed.set(false);
        counter.close();
        assertEquals(WatchedCounter.CLOSED, counter.get());
    }

    /**
     * The worker's crash: a watcher checked the counter, was descheduled, and read it after the
     * member's Aeron client had unmapped it. Here each read takes a millisecond and the "unmap"
     * follows close() at once; no read may be under way or start after close() returns.
     */
    @Test
    void noReadRunsOnceCloseHasReturned() throws Exception
    {
        final AtomicBoolean unmapped = new AtomicBoolean();
        final AtomicInteger readsAfterUnmap = new AtomicInteger();
        final AtomicInteger reads = new AtomicInteger();
        final WatchedCounter counter = new WatchedCounter(() ->
        {
            reads.incrementAndGet();
            LockSupport.parkNanos(1_000_000);
            if (unmapped.get())
            {
                readsAfterUnmap.incrementAndGet();
            }
            return 1;
        }, () -> false);
        final Thread watcher = new Thread(() ->
        {
            while (counter.get() != WatchedCounter.CLOSED)
            {
                Thread.onSpinWait();
            }
        });
        watcher.start();
        while (reads.get() < 20)
        {
            Thread.sleep(1);
        }
        counter.close();
        unmapped.set(true);
        watcher.join(5_000);
        assertFalse(watcher.isAlive());
        assertEquals(0, readsAfterUnmap.get());
    }
}
