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
    static IdleStrategy longParks()
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
        return parkedFor(wakeups, AgentWakeups.Agent.SERVICE, poke);
    }

    /** {@code agent} parked for 2 s; returns how long its park lasted once {@code poke} ran. */
    static long parkedFor(final AgentWakeups wakeups, final AgentWakeups.Agent agent, final Runnable poke)
        throws InterruptedException
    {
        final IdleStrategy idle = wakeups.wrap(longParks(), agent, null);
        final CountDownLatch known = new CountDownLatch(1);
        final AtomicLong parkedNs = new AtomicLong();
        final Thread thread = new Thread(() ->
        {
            idle.idle(1); // learns the thread without parking
            known.countDown();
            final long start = System.nanoTime();
            idle.idle(0);
            parkedNs.set(System.nanoTime() - start);
        });
        thread.start();
        assertTrue(known.await(5, TimeUnit.SECONDS));
        assertEquals(thread, wakeups.thread(agent));
        Thread.sleep(100); // let it park
        poke.run();
        thread.join(5_000);
        return parkedNs.get();
    }

    static IdleStrategy shortParks()
    {
        return new BackoffIdleStrategy(0, 0, 1_000, 1_000);
    }

    @Test
    void inTheCommitModeTheConsensusModuleWakesTheServiceWhenTheCommitMoves() throws InterruptedException
    {
        final AgentWakeups wakeups = new AgentWakeups(false);
        final AtomicLong commit = new AtomicLong(100);
        final IdleStrategy consensus = wakeups.wrap(shortParks(), AgentWakeups.Agent.CONSENSUS, commit::get);
        consensus.idle(1); // sees 100
        final long parked = parkedFor(wakeups, () ->
        {
            consensus.idle(1); // work, the commit still at 100: nobody woken
            commit.set(200);
            consensus.idle(1);
        });
        assertTrue(parked < TimeUnit.SECONDS.toNanos(1), "woken after " + parked + " ns");
    }

    @Test
    void inTheCommitModeWorkWithoutACommitWakesNobody() throws InterruptedException
    {
        final AgentWakeups wakeups = new AgentWakeups(false);
        final IdleStrategy consensus = wakeups.wrap(shortParks(), AgentWakeups.Agent.CONSENSUS, () -> 100);
        consensus.idle(1);
        final long parked = parkedFor(wakeups, () -> consensus.idle(1));
        assertTrue(parked >= TimeUnit.MILLISECONDS.toNanos(1_500), "woken after " + parked + " ns");
    }

    @Test
    void inTheCommitModeWorkDuringAnElectionWakesTheService() throws InterruptedException
    {
        final AgentWakeups wakeups = new AgentWakeups(false);
        final IdleStrategy consensus = wakeups.wrap(shortParks(), AgentWakeups.Agent.CONSENSUS, () -> 100, () -> true);
        consensus.idle(1);
        final long woken = parkedFor(wakeups, () -> consensus.idle(1));
        assertTrue(woken < TimeUnit.SECONDS.toNanos(1), "woken after " + woken + " ns");

        final AgentWakeups closed = new AgentWakeups(false);
        final IdleStrategy steady = closed.wrap(shortParks(), AgentWakeups.Agent.CONSENSUS, () -> 100, () -> false);
        steady.idle(1);
        final long parked = parkedFor(closed, () -> steady.idle(1));
        assertTrue(parked >= TimeUnit.MILLISECONDS.toNanos(1_500), "woken after " + parked + " ns");
    }

    @Test
    void theServiceParksUpTo10msByDefaultAndLightWorkStaysBelowAConsensusFrame()
    {
        final MemberSettings defaults = MemberSettings.from(MemberSettingsTest.valid());
        assertEquals(10_000, defaults.serviceMaxParkUs);
        assertEquals(1_000, defaults.idleMaxParkUs);
        assertEquals(LightWorkBackoff.DEFAULT_LIGHT_WORK, defaults.driverLightWork);
        final Properties bad = MemberSettingsTest.valid();
        bad.setProperty("idle.driver.light.work", "64");
        final IllegalArgumentException ex = assertThrows(IllegalArgumentException.class, () -> MemberSettings.from(bad));
        assertTrue(ex.getMessage().contains("idle.driver.light.work"), ex.getMessage());
    }

    @Test
    void inTheAllModeAnyWorkWakesTheServiceButACycleWithoutWorkDoesNot() throws InterruptedException
    {
        final AgentWakeups all = new AgentWakeups(true);
        final IdleStrategy consensus = all.wrap(shortParks(), AgentWakeups.Agent.CONSENSUS, null);
        final long woken = parkedFor(all, () -> consensus.idle(1));
        assertTrue(woken < TimeUnit.SECONDS.toNanos(1), "woken after " + woken + " ns");

        final AgentWakeups other = new AgentWakeups(true);
        final IdleStrategy idleConsensus = other.wrap(shortParks(), AgentWakeups.Agent.CONSENSUS, null);
        final long parked = parkedFor(other, () -> idleConsensus.idle(0));
        assertTrue(parked >= TimeUnit.MILLISECONDS.toNanos(1_500), "woken after " + parked + " ns");
    }

    @Test
    void theDriverWakesNobodyAndTheArchiveTheConsensusModuleOnlyInTheAllMode() throws InterruptedException
    {
        assertArrayEquals(new AgentWakeups.Agent[0], AgentWakeups.wakes(AgentWakeups.Agent.DRIVER, true));
        assertArrayEquals(new AgentWakeups.Agent[]{ AgentWakeups.Agent.CONSENSUS },
            AgentWakeups.wakes(AgentWakeups.Agent.ARCHIVE, true));
        assertArrayEquals(new AgentWakeups.Agent[0], AgentWakeups.wakes(AgentWakeups.Agent.ARCHIVE, false));
        final AgentWakeups wakeups = new AgentWakeups(true);
        final IdleStrategy driver = wakeups.wrap(shortParks(), AgentWakeups.Agent.DRIVER, null);
        final long parked = parkedFor(wakeups, () -> driver.idle(5));
        assertTrue(parked >= TimeUnit.MILLISECONDS.toNanos(1_500), "woken after " + parked + " ns");
    }

    @Test
    void commitByDefaultOffBySettingAndABadValueIsRefused()
    {
        final MemberSettings defaults = MemberSettings.from(MemberSettingsTest.valid());
        assertEquals(AgentWakeups.COMMIT, defaults.agentWakeups);
        assertNotNull(defaults.wakeups);
        final Properties off = MemberSettingsTest.valid();
        off.setProperty("agent.wakeups", "off");
        assertNull(MemberSettings.from(off).wakeups);
        final Properties bad = MemberSettingsTest.valid();
        bad.setProperty("agent.wakeups", "yes");
        final IllegalArgumentException ex = assertThrows(IllegalArgumentException.class, () -> MemberSettings.from(bad));
        assertTrue(ex.getMessage().contains("agent.wakeups"), ex.getMessage());
    }
}
