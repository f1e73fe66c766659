package io.matchx.cluster;

import sun.misc.Signal;

import java.util.concurrent.CountDownLatch;

/**
 * Parks the member's main thread until SIGTERM or SIGINT, without starting JVM shutdown.
 *
 * <p>Agrona's ShutdownSignalBarrier works through a shutdown hook, so the JVM is already going
 * down while the member closes (and JPype interrupts the closing thread). Handling the signals
 * directly lets the main thread return, close Aeron in order and let Python exit normally.
 */
public final class ShutdownLatch
{
    private final CountDownLatch latch = new CountDownLatch(1);
    private volatile String signal = "";

    public ShutdownLatch()
    {
        for (final String name : new String[]{ "TERM", "INT" })
        {
            Signal.handle(new Signal(name), (s) ->
            {
                signal = s.getName();
                latch.countDown();
            });
        }
    }

    /** @return the name of the signal that ended the wait. */
    public String await() throws InterruptedException
    {
        latch.await();
        return signal;
    }

    public void release()
    {
        latch.countDown();
    }
}
