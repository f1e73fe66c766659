package io.aeron.driver;

import io.aeron.Aeron;
import io.aeron.Publication;
import org.agrona.CloseHelper;
import org.agrona.IoUtil;
import org.agrona.concurrent.SleepingMillisIdleStrategy;
import org.junit.jupiter.api.Test;

import java.io.File;
import java.util.concurrent.TimeUnit;

import static org.junit.jupiter.api.Assertions.assertTrue;

class ExecutorWakeupTest
{
    /**
     * Adding a network publication waits for the executor (it resolves the endpoint there): with an
     * executor that sleeps 5 s between tasks, the add still returns at once because the driver
     * wakes it.
     */
    @Test
    void anAddedPublicationDoesNotWaitForTheExecutorsSleep()
    {
        final String aeronDir = "/dev/shm/matchx-junit-executor-" + ProcessHandle.current().pid();
        final long sleepNs = TimeUnit.SECONDS.toNanos(5);
        final MediaDriver.Context ctx = new MediaDriver.Context()
            .aeronDirectoryName(aeronDir)
            .dirDeleteOnStart(true)
            .dirDeleteOnShutdown(true)
            .threadingMode(ThreadingMode.SHARED)
            .termBufferSparseFile(true)
            .publicationTermBufferLength(64 * 1024);
        ctx.sharedIdleStrategy(ExecutorWakeup.install(ctx, new SleepingMillisIdleStrategy(1), sleepNs));
        MediaDriver driver = null;
        Aeron aeron = null;
        try
        {
            driver = MediaDriver.launch(ctx);
            aeron = Aeron.connect(new Aeron.Context().aeronDirectoryName(aeronDir));
            for (int i = 0; i < 3; i++)
            {
                final long start = System.nanoTime();
                final Publication publication = aeron.addPublication("aeron:udp?endpoint=127.0.0.1:" + (24_310 + i), 1001);
                final long tookMs = TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - start);
                assertTrue(publication.registrationId() > 0);
                assertTrue(tookMs < 1_000, "add " + i + " took " + tookMs + " ms");
            }
        }
        finally
        {
            CloseHelper.closeAll(aeron, driver);
            IoUtil.delete(new File(aeronDir), true);
        }
    }
}
