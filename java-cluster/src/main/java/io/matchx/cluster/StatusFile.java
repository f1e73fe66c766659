package io.matchx.cluster;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;

/**
 * A small JSON file a member rewrites a few times a second (write then rename, so readers never
 * see half a file). {@code matchctl cluster status} and the tests read it; it is output only and
 * never read back by the service, so it cannot make members diverge.
 */
public final class StatusFile
{
    private final Path path;
    private final Path temp;
    private final long pid = ProcessHandle.current().pid();

    public StatusFile(final Path path)
    {
        this.path = path;
        this.temp = path.resolveSibling(path.getFileName() + ".tmp");
    }

    public void write(
        final int memberId,
        final int role,
        final int leaderMemberId,
        final long leadershipTermId,
        final long logPosition,
        final long lastSnapshotPosition,
        final SnapshotStats snapshot,
        final long droppedReplies)
    {
        final String json = "{\"member_id\":" + memberId +
            ",\"pid\":" + pid +
            ",\"role\":\"" + roleName(role) + "\"" +
            ",\"leader_member_id\":" + leaderMemberId +
            ",\"leadership_term_id\":" + leadershipTermId +
            ",\"log_position\":" + logPosition +
            ",\"last_snapshot_position\":" + lastSnapshotPosition +
            ",\"last_snapshot_bytes\":" + snapshot.bytes +
            ",\"last_snapshot_build_ms\":" + snapshot.buildMs +
            ",\"last_snapshot_write_ms\":" + snapshot.writeMs +
            ",\"dropped_replies\":" + droppedReplies +
            ",\"updated_ms\":" + System.currentTimeMillis() + "}\n";
        try
        {
            Files.write(temp, json.getBytes(StandardCharsets.UTF_8));
            Files.move(temp, path, StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
        }
        catch (final IOException ignore)
        {
            // Status is advisory; a full disk must not stop the service.
        }
    }

    /** The last snapshot this member's service took: its size and how long it took (-1: none yet). */
    public static final class SnapshotStats
    {
        static final SnapshotStats NONE = new SnapshotStats(-1, -1, -1);

        final long bytes;
        /** The service (Python) building the state's bytes. */
        final long buildMs;
        /** Offering the bytes to the snapshot recording, in chunks. */
        final long writeMs;

        SnapshotStats(final long bytes, final long buildMs, final long writeMs)
        {
            this.bytes = bytes;
            this.buildMs = buildMs;
            this.writeMs = writeMs;
        }
    }

    static String roleName(final int role)
    {
        switch (role)
        {
            case 0: return "follower";
            case 1: return "candidate";
            case 2: return "leader";
            default: return "starting";
        }
    }
}
