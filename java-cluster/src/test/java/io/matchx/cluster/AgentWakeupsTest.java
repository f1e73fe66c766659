package io.matchx.cluster;

import org.agrona.concurrent.BackoffIdleStrategy;
import org.agrona.concurrent.IdleStrategy;
import org.junit.jupiter.api.Test;

import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.locks.LockSupport;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

class AgentWakeupsTest
{
    /** Every idle(0) is one park of up to 2 s, as a backoff's longest park (with LockSupport). */
    private static IdleStrategy longParks()
    {
        return new IdleStrategy()
        {
            public void idle(final int workCount)
            {
                if (workCount <= 0)
                {
                    LockSupport.parkNanos(TimeUnit.SECONDS.toNanos(2));
                }
            }

            public void idle()
            {
                idle(0);
            }

            public void reset()
            {
            }
        };
    }

    /** A service agent parked for 2 s; returns how long its park lasted once {@code poke} ran. */
    private static long parkedFor(final AgentWakeups wakeups, final Runnable poke) throws InterruptedException
    {
        final IdleStrategy service = wakeups.wrap(longParks(), AgentWakeups.Agent.SERVICE);
        final CountDownLatch known = new CountDownLatch(1);
        final AtomicLong parkedNs = new AtomicLong();
        final Thread agent = new Thread(() ->
        {
            service.idle(1); // learns the thread without parking
            known.countDown();
            final long start = System.nanoTime();
            service.idle(0);
            parkedNs.set(System.nanoTime() - start);
        });
        agent.start();
        assertTrue(known.await(5, TimeUnit.SECONDS));
        assertEquals(agent, wakeups.thread(AgentWakeups.Agent.SERVICE));
        Thread.sleep(100); // let it park
        poke.run();
        agent.join(5_000);
        return parkedNs.get();
    }

    @Test
    void theConsensusModulesWorkWakesTheParkedService() throws InterruptedException
    {
        final AgentWakeups wakeups = new AgentWakeups();
        final IdleStrategy consensus = wakeups.wrap(new BackoffIdleStrategy(0, 0, 1_000, 1_000), AgentWakeups.Agent.CONSENSUS);
        final long parked = parkedFor(wakeups, () -> consensus.idle(1));
        assertTrue(parked < TimeUnit.SECONDS.toNanos(1), "woken after " + parked + " ns");
    }

    @Test
    void aCycleWithoutWorkWakesNobody() throws InterruptedException
    {
        final AgentWakeups wakeups = new AgentWakeups();
        final IdleStrategy consensus = wakeups.wrap(new BackoffIdleStrategy(0, 0, 1_000, 1_000), AgentWakeups.Agent.CONSENSUS);
        final long parked = parkedFor(wakeups, () -> consensus.idle(0));
        assertTrue(parked >= TimeUnit.MILLISECONDS.toNanos(1_500), "woken after " + parked + " ns");
    }

    @Test
    void theDriverWakesNobodyAndTheArchiveOnlyTheConsensusModule() throws InterruptedException
    {
        assertArrayEquals(new AgentWakeups.Agent[0], AgentWakeups.wakes(AgentWakeups.Agent.DRIVER));
        assertArrayEquals(new AgentWakeups.Agent[]{ AgentWakeups.Agent.CONSENSUS },
            AgentWakeups.wakes(AgentWakeups.Agent.ARCHIVE));
        final AgentWakeups wakeups = new AgentWakeups();
        final IdleStrategy driver = wakeups.wrap(new BackoffIdleStrategy(0, 0, 1_000, 1_000), AgentWakeups.Agent.DRIVER);
        final long parked = parkedFor(wakeups, () -> driver.idle(5));
        assertTrue(parked >= TimeUnit.MILLISECONDS.toNanos(1_500), "woken after " + parked + " ns");
    }

    @Test
    void onByDefaultOffBySettingAndABadValueIsRefused()
    {
        assertNotNull(MemberSettings.from(MemberSettingsTest.valid()).wakeups);
        final Properties off = MemberSettingsTest.valid();
        off.setProperty("agent.wakeups", "false");
        assertNull(MemberSettings.from(off).wakeups);
        final Properties bad = MemberSettingsTest.valid();
        bad.setProperty("agent.wakeups", "yes");
        final IllegalArgumentException ex = assertThrows(IllegalArgumentException.class, () -> MemberSettings.from(bad));
        assertTrue(ex.getMessage().contains("agent.wakeups"), ex.getMessage());
    }
}
