package io.matchx.cluster;

import sun.misc.Signal;

import java.util.concurrent.CountDownLatch;

/**
 * Parks the member's main thread until SIGTERM or SIGINT (stop), or SIGHUP or {@link #restart}
 * (start again in place), without starting JVM shutdown.
 *
 * <p>Agrona's ShutdownSignalBarrier works through a shutdown hook, so the JVM is already going
 * down while the member closes (and JPype interrupts the closing thread). Handling the signals
 * directly lets the main thread return, close Aeron in order and let Python exit normally.
 */
public final class ShutdownLatch
{
    /** What {@link #await} returns when the process must start again ({@link #restart}). */
    public static final String RESTART = "RESTART";
    /** The process's latch (one per member or worker process): what {@link #restart} releases. */
    private static volatile ShutdownLatch current;

    private final CountDownLatch latch = new CountDownLatch(1);
    private volatile String signal = "";
    private volatile String restartReason = "";

    public ShutdownLatch()
    {
        current = this;
        for (final String name : new String[]{ "TERM", "INT" })
        {
            Signal.handle(new Signal(name), (s) ->
            {
                signal = s.getName();
                latch.countDown();
            });
        }
        // SIGHUP: start the process again in place (what JoinDeadlock asks for), for an operator
        // and for the tests of that path
        Signal.handle(new Signal("HUP"), (s) -> restart("SIGHUP"));
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

    /** Why {@link #await} returned {@link #RESTART} (empty otherwise). */
    public String restartReason()
    {
        return restartReason;
    }

    /**
     * Ends the main thread's wait with {@link #RESTART}: the Python side then starts the process
     * again from its own command line (a member that Aeron left in a state it cannot leave,
     * JoinDeadlock). A no-op before a latch exists or after a signal ended the wait.
     */
    static void restart(final String why)
    {
        final ShutdownLatch latch = current;
        if (null != latch && latch.latch.getCount() > 0)
        {
            latch.restartReason = why;
            latch.signal = RESTART;
            latch.latch.countDown();
        }
    }
}
