package io.matchx.cluster;

/**
 * Measures the cost of a Java-to-Python crossing as Aeron makes it: from a Java thread, into a
 * {@link ServiceHandler} implemented in Python. Used by bench/bridge_bench.py only.
 */
public final class CrossingProbe
{
    private CrossingProbe()
    {
    }

    /** @return nanoseconds per call, measured on a new Java thread that the caller joins in Java. */
    public static double measure(final ServiceHandler handler, final int iterations) throws InterruptedException
    {
        final double[] result = new double[1];
        final Thread thread = new Thread(() ->
        {
            for (int i = 0; i < Math.min(1000, iterations); i++)
            {
                handler.onSessionMessage(1, i, i, 0);
            }
            final long start = System.nanoTime();
            for (int i = 0; i < iterations; i++)
            {
                handler.onSessionMessage(1, i, i, 0);
            }
            result[0] = (System.nanoTime() - start) / (double)iterations;
        }, "crossing-probe");
        thread.start();
        thread.join();
        return result[0];
    }

    /** Starts the same measurement without waiting, so the caller can keep its thread in Python. */
    public static Thread start(final ServiceHandler handler, final int iterations, final double[] result)
    {
        final Thread thread = new Thread(() ->
        {
            final long start = System.nanoTime();
            for (int i = 0; i < iterations; i++)
            {
                handler.onSessionMessage(1, i, i, 0);
            }
            result[0] = (System.nanoTime() - start) / (double)iterations;
        }, "crossing-probe");
        thread.start();
        return thread;
    }
}
