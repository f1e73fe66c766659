package io.aeron.driver;

import org.agrona.concurrent.IdleStrategy;
import org.agrona.concurrent.OneToOneConcurrentArrayQueue;
import org.agrona.concurrent.SleepingIdleStrategy;

import java.util.concurrent.locks.LockSupport;

/**
 * The media driver's async executor (thread {@code aeron-executor}: name resolution of a new
 * publication's or subscription's endpoints) sleeps long and is woken by the driver when a task
 * waits for it; the driver is woken back when the task is done.
 *
 * <p>Why: Aeron's executor polls its task queue every 1 ms (a {@link SleepingIdleStrategy}), ~930
 * wake-ups a second, ~0.9 % of a core per idle member (bench/reports/idle_cpu*.md), for tasks that
 * come only when a publication or subscription is added (client connects, elections). Turning the
 * executor off runs the same polling on the driver's thread and saved nothing
 * (bench/reports/idle_cpu_levers.md). In this package because the queue is package-private.
 */
public final class ExecutorWakeup
{
    private volatile Thread driverThread;
    private volatile Thread executorThread;

    private ExecutorWakeup()
    {
    }

    /**
     * Sets {@code ctx}'s executor to park up to {@code executorParkNs} between tasks, and returns
     * {@code driverIdle} wrapped to wake it: give the result to the driver as its idle strategy.
     */
    public static IdleStrategy install(final MediaDriver.Context ctx, final IdleStrategy driverIdle, final long executorParkNs)
    {
        final ExecutorWakeup wakeup = new ExecutorWakeup();
        final IdleStrategy executorIdle = new SleepingIdleStrategy(executorParkNs);
        ctx.asyncExecutorIdleStrategy(new IdleStrategy()
        {
            public void idle(final int workCount)
            {
                if (null == wakeup.executorThread)
                {
                    wakeup.executorThread = Thread.currentThread();
                }
                if (workCount > 0)
                {
                    unpark(wakeup.driverThread); // the task's result waits in the conductor's queue
                }
                executorIdle.idle(workCount);
            }

            public void idle()
            {
                executorIdle.idle();
            }

            public void reset()
            {
                executorIdle.reset();
            }

            public String alias()
            {
                return "executor-wakeup";
            }
        });
        return new IdleStrategy()
        {
            private OneToOneConcurrentArrayQueue<Runnable> tasks;

            public void idle(final int workCount)
            {
                if (null == tasks)
                {
                    wakeup.driverThread = Thread.currentThread();
                    tasks = ctx.asyncTaskQueue(); // set when the driver's context concludes
                }
                if (null != tasks && !tasks.isEmpty())
                {
                    unpark(wakeup.executorThread);
                }
                driverIdle.idle(workCount);
            }

            public void idle()
            {
                driverIdle.idle();
            }

            public void reset()
            {
                driverIdle.reset();
            }

            public String alias()
            {
                return driverIdle.alias();
            }
        };
    }

    private static void unpark(final Thread thread)
    {
        if (null != thread)
        {
            LockSupport.unpark(thread);
        }
    }
}
