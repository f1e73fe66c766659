package io.matchx.cluster;

import org.junit.jupiter.api.Test;

import java.util.Properties;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

class MemberSettingsTest
{
    static Properties valid()
    {
        final Properties p = new Properties();
        p.setProperty("member.id", "0");
        p.setProperty("cluster.members", "0,h:1,h:2,h:3,h:4,h:5");
        p.setProperty("host", "127.0.0.1");
        p.setProperty("archive.port", "20000");
        p.setProperty("base.dir", "/tmp/x");
        p.setProperty("aeron.dir", "/dev/shm/x");
        return p;
    }

    @Test
    void defaultsAreUsable()
    {
        final MemberSettings s = MemberSettings.from(valid());
        assertEquals(1 << 20, s.termLength);
        assertTrue(s.heartbeatTimeoutMs > 2 * s.heartbeatIntervalMs);
        // Aeron's own default (10) refused clients under load
        assertEquals(100, s.maxConcurrentSessions);
        final Properties more = valid();
        more.setProperty("max.concurrent.sessions", "500");
        assertEquals(500, MemberSettings.from(more).maxConcurrentSessions);
        // and it reaches the consensus module
        assertEquals(500, MemberNode.newContexts(MemberSettings.from(more), (io.aeron.cluster.service.ClusteredService)null,
            Throwable::printStackTrace).consensusModule.maxConcurrentSessions());
    }

    @Test
    void missingAndInvalidSettingsAreNamed()
    {
        final Properties noMembers = valid();
        noMembers.remove("cluster.members");
        assertTrue(assertThrows(IllegalArgumentException.class, () -> MemberSettings.from(noMembers))
            .getMessage().contains("cluster.members"));

        final Properties badSnapshotTerm = valid();
        badSnapshotTerm.setProperty("snapshot.term.length", "100000");
        assertTrue(assertThrows(IllegalArgumentException.class, () -> MemberSettings.from(badSnapshotTerm))
            .getMessage().contains("snapshot.term.length"));
        final Properties badSnapshotMtu = valid();
        badSnapshotMtu.setProperty("snapshot.mtu", "70000");
        assertTrue(assertThrows(IllegalArgumentException.class, () -> MemberSettings.from(badSnapshotMtu))
            .getMessage().contains("snapshot.mtu"));
        final Properties snapshotTerm = valid();
        snapshotTerm.setProperty("snapshot.term.length", String.valueOf(1 << 20));
        assertTrue(MemberNode.snapshotChannel(MemberSettings.from(snapshotTerm)).endsWith("term-length=1048576"));

        final Properties badTerm = valid();
        badTerm.setProperty("term.length", "100000");
        assertTrue(assertThrows(IllegalArgumentException.class, () -> MemberSettings.from(badTerm))
            .getMessage().contains("term.length"));

        final Properties notNumber = valid();
        notNumber.setProperty("archive.port", "eighty");
        assertTrue(assertThrows(IllegalArgumentException.class, () -> MemberSettings.from(notNumber))
            .getMessage().contains("archive.port"));

        final Properties canvass = valid();
        canvass.setProperty("startup.canvass.timeout.ms", "100");
        assertTrue(assertThrows(IllegalArgumentException.class, () -> MemberSettings.from(canvass))
            .getMessage().contains("canvass"));

        for (final String[] bad : new String[][] {
            {"election.timeout.ms", "0"}, {"election.timeout.ms", "500"},
            {"election.status.interval.ms", "0"}, {"election.status.interval.ms", "500"},
            {"idle.min.park.us", "0"}, {"idle.min.park.us", "5000"}, {"idle.yields", "-1"},
            {"setup.repeat.ms", "0"}, {"setup.repeat.ms", "1001"},
            {"max.concurrent.sessions", "0"}, {"max.concurrent.sessions", "100001"}})
        {
            final Properties p = valid();
            p.setProperty(bad[0], bad[1]);
            assertTrue(assertThrows(IllegalArgumentException.class, () -> MemberSettings.from(p))
                .getMessage().contains(bad[0]), bad[0] + "=" + bad[1]);
        }
    }

    @Test
    void idleAndElectionSettingsAreRead()
    {
        final Properties p = valid();
        p.setProperty("election.status.interval.ms", "20");
        p.setProperty("idle.min.park.us", "50");
        p.setProperty("idle.yields", "0");
        final MemberSettings s = MemberSettings.from(p);
        assertEquals(20, s.electionStatusIntervalMs);
        assertEquals(50, s.idleMinParkUs);
        assertEquals(0, s.idleYields);
        assertEquals(100, MemberSettings.from(valid()).electionStatusIntervalMs);
        assertEquals(20, MemberSettings.from(valid()).electionTimeoutMs);
        assertEquals(SetupRepeat.DEFAULT_MS, MemberSettings.from(valid()).setupRepeatMs);
    }
}
