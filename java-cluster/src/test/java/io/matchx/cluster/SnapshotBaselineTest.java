package io.matchx.cluster;

import io.aeron.cluster.RecordingLog;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.io.File;

import static org.junit.jupiter.api.Assertions.assertEquals;

/**
 * Where a restarting member's snapshot clock starts: the snapshot schedule's time trigger must
 * count from the snapshot it loads, or from the log's start when the cluster never took one; a
 * failover run where members restart every few seconds otherwise never takes a snapshot by time.
 */
class SnapshotBaselineTest
{
    @Test
    void freshMemberHasNoBaseline(@TempDir final File dir)
    {
        assertEquals(0, MemberNode.latestSnapshotTimestampMs(dir));
    }

    @Test
    void withoutSnapshotTheClockStartsAtTheLogsFirstTerm(@TempDir final File dir)
    {
        try (RecordingLog log = new RecordingLog(dir, true))
        {
            log.appendTerm(7, 0, 0, 1_000L);
            log.appendTerm(7, 1, 4096, 5_000L);
        }
        assertEquals(1_000L, MemberNode.latestSnapshotTimestampMs(dir));
    }

    @Test
    void withSnapshotTheClockStartsAtTheLatestSnapshot(@TempDir final File dir)
    {
        try (RecordingLog log = new RecordingLog(dir, true))
        {
            log.appendTerm(7, 0, 0, 1_000L);
            // a snapshot is one entry per service, then the consensus module's (service id -1)
            log.appendSnapshot(8, 0, 0, 4096, 3_000L, 0);
            log.appendSnapshot(9, 0, 0, 4096, 3_000L, -1);
        }
        assertEquals(3_000L, MemberNode.latestSnapshotTimestampMs(dir));
    }
}
