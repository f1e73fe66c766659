package io.matchx.cluster;

import org.agrona.concurrent.BackoffIdleStrategy;
import org.agrona.concurrent.IdleStrategy;
import org.junit.jupiter.api.Test;

import java.util.Properties;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** The consensus module's and the archive's long parks, and who ends them (AgentWakeups, PayloadWakeups). */
class WokenParksTest
{
    private static final long WOKEN_NS = TimeUnit.SECONDS.toNanos(1);
    private static final long NOT_WOKEN_NS = TimeUnit.MILLISECONDS.toNanos(1_500);

    private static IdleStrategy shortParks()
    {
        return AgentWakeupsTest.shortParks();
    }

    private static long parkedFor(final AgentWakeups wakeups, final AgentWakeups.Agent agent, final Runnable poke)
        throws InterruptedException
    {
        return AgentWakeupsTest.parkedFor(wakeups, agent, poke);
    }

    @Test
    void theDriverEndsTheConsensusModulesAndTheArchivesParksAfterACycleWithAPayloadOnly() throws InterruptedException
    {
        final AgentWakeups wakeups = new AgentWakeups(false, true);
        final PayloadWakeups payloads = new PayloadWakeups();
        payloads.add(wakeups);
        final IdleStrategy driver = payloads.wrap(shortParks());

        final long consensus = parkedFor(wakeups, AgentWakeups.Agent.CONSENSUS, () -> driver.idle(64));
        assertTrue(consensus < WOKEN_NS, "consensus module woken after " + consensus + " ns");
        final long archive = parkedFor(wakeups, AgentWakeups.Agent.ARCHIVE, () -> driver.idle(64));
        assertTrue(archive < WOKEN_NS, "archive woken after " + archive + " ns");

        // a lone heartbeat or status message (32, 36 bytes) is not for them
        final long light = parkedFor(wakeups, AgentWakeups.Agent.CONSENSUS, () -> driver.idle(36));
        assertTrue(light >= NOT_WOKEN_NS, "woken after " + light + " ns");

        payloads.remove(wakeups);
        final long removed = parkedFor(wakeups, AgentWakeups.Agent.ARCHIVE, () -> driver.idle(64));
        assertTrue(removed >= NOT_WOKEN_NS, "woken after " + removed + " ns");
    }

    @Test
    void theArchiveAndTheServiceWakeTheConsensusModuleAndItWakesTheArchiveDuringAnElection() throws InterruptedException
    {
        final AgentWakeups wakeups = new AgentWakeups(false, true);
        final IdleStrategy archive = wakeups.wrap(shortParks(), AgentWakeups.Agent.ARCHIVE, null);
        final long byArchive = parkedFor(wakeups, AgentWakeups.Agent.CONSENSUS, () -> archive.idle(1));
        assertTrue(byArchive < WOKEN_NS, "woken after " + byArchive + " ns");
        final IdleStrategy service = wakeups.wrap(shortParks(), AgentWakeups.Agent.SERVICE, null);
        final long byService = parkedFor(wakeups, AgentWakeups.Agent.CONSENSUS, () -> service.idle(1));
        assertTrue(byService < WOKEN_NS, "woken after " + byService + " ns");

        final AtomicBoolean election = new AtomicBoolean(true);
        final IdleStrategy consensus = wakeups.wrap(shortParks(), AgentWakeups.Agent.CONSENSUS, () -> 100, election::get);
        consensus.idle(1); // sees the commit at 100
        final long inElection = parkedFor(wakeups, AgentWakeups.Agent.ARCHIVE, () -> consensus.idle(1));
        assertTrue(inElection < WOKEN_NS, "woken after " + inElection + " ns");
        election.set(false);
        final long steady = parkedFor(wakeups, AgentWakeups.Agent.ARCHIVE, () -> consensus.idle(1));
        assertTrue(steady >= NOT_WOKEN_NS, "woken after " + steady + " ns");

        // without woken parks (the old behaviour) the archive wakes nobody in the commit mode
        final AgentWakeups plain = new AgentWakeups(false, false);
        final IdleStrategy plainArchive = plain.wrap(shortParks(), AgentWakeups.Agent.ARCHIVE, null);
        final long notWoken = parkedFor(plain, AgentWakeups.Agent.CONSENSUS, () -> plainArchive.idle(1));
        assertTrue(notWoken >= NOT_WOKEN_NS, "woken after " + notWoken + " ns");
    }

    @Test
    void theyParkLongOnlyWhileADriverWakesThemAndNoElectionRuns()
    {
        final AgentWakeups wakeups = new AgentWakeups(false, true);
        assertFalse(wakeups.mayParkLong(), "a member starts in an election, with no driver yet");
        final PayloadWakeups payloads = new PayloadWakeups();
        payloads.add(wakeups);
        assertFalse(wakeups.mayParkLong());
        final AtomicBoolean election = new AtomicBoolean(false);
        final IdleStrategy consensus = wakeups.wrap(shortParks(), AgentWakeups.Agent.CONSENSUS, () -> 1, election::get);
        consensus.idle(1);
        assertTrue(wakeups.mayParkLong());
        election.set(true);
        consensus.idle(0);
        assertFalse(wakeups.mayParkLong(), "an election's steps need the short park");
        election.set(false);
        consensus.idle(0);
        assertTrue(wakeups.mayParkLong());
        payloads.remove(wakeups);
        assertFalse(wakeups.mayParkLong(), "nobody wakes them any more");

        final AgentWakeups plain = new AgentWakeups(false, false);
        new PayloadWakeups().add(plain);
        assertFalse(plain.mayParkLong(), "without woken parks a driver does not take them on");
    }

    @Test
    void theSwitchedBackoffParksLongOnlyWhileAllowed()
    {
        final AtomicBoolean allowed = new AtomicBoolean(false);
        final IdleStrategy idle = new SwitchedBackoff(
            new BackoffIdleStrategy(0, 0, TimeUnit.MILLISECONDS.toNanos(1), TimeUnit.MILLISECONDS.toNanos(1)),
            new BackoffIdleStrategy(0, 0, TimeUnit.MILLISECONDS.toNanos(400), TimeUnit.MILLISECONDS.toNanos(400)),
            allowed::get);
        assertTrue(fourIdles(idle) < TimeUnit.MILLISECONDS.toNanos(200), "short parks");
        allowed.set(true);
        assertTrue(fourIdles(idle) >= TimeUnit.MILLISECONDS.toNanos(300), "a long park");
        final long start = System.nanoTime();
        idle.idle(1); // work: no park
        assertTrue(System.nanoTime() - start < TimeUnit.MILLISECONDS.toNanos(200));
    }

    /** Four idle calls: a backoff's first ones spin or yield (none here), the following park. */
    private static long fourIdles(final IdleStrategy idle)
    {
        final long start = System.nanoTime();
        for (int i = 0; i < 4; i++)
        {
            idle.idle(0);
        }
        return System.nanoTime() - start;
    }

    @Test
    void woken4msByDefaultOffAtTheShortParkAndABadValueIsRefused()
    {
        final MemberSettings defaults = MemberSettings.from(MemberSettingsTest.valid());
        assertEquals(4_000, defaults.wokenMaxParkUs);
        assertTrue(defaults.wakeups.wokenParks());
        final Properties off = MemberSettingsTest.valid();
        off.setProperty("idle.woken.max.park.us", "1000");
        assertFalse(MemberSettings.from(off).wakeups.wokenParks());
        final Properties compact = MemberSettingsTest.valid();
        compact.setProperty("threading", MemberSettings.THREADING_COMPACT);
        assertFalse(MemberSettings.from(compact).wakeups.wokenParks());
        final Properties bad = MemberSettingsTest.valid();
        bad.setProperty("idle.woken.max.park.us", "0");
        final IllegalArgumentException ex = assertThrows(IllegalArgumentException.class, () -> MemberSettings.from(bad));
        assertTrue(ex.getMessage().contains("idle.woken.max.park.us"), ex.getMessage());
    }
}
