package io.matchx.cluster;

import io.aeron.AeronCounters;
import io.aeron.cluster.ClusterMember;
import io.aeron.cluster.ClusterMembership;
import io.aeron.cluster.ClusterTool;
import io.aeron.cluster.service.ClusterCounters;
import org.agrona.concurrent.status.CountersReader;

import java.io.File;

/**
 * One member's facts for its {@code /metrics} endpoint, read at scrape time (never on the log's
 * path): the service's own counts ({@link MatchService}) and the consensus module's Aeron counters
 * of this member's cluster id (a worker's driver holds the counters of several clusters).
 *
 * <p>Python reads {@link #NAMES} once and {@link #sample} per scrape: one crossing per scrape.
 */
public final class MemberMetrics
{
    /** The slots of {@link #sample}, in order. A missing Aeron counter reads -1. */
    public static final String[] NAMES = {
        "role", "leader_member_id", "leadership_term_id", "service_position",
        "commit_position", "election_state", "election_count", "snapshot_count",
        "consensus_errors", "client_timeouts", "invalid_requests", "service_errors",
        "max_cycle_ns", "cycle_threshold_exceeded", "service_max_cycle_ns",
        "ingress_messages", "egress_messages", "egress_back_pressure", "dropped_replies",
        "leader_changes", "role_changes", "sessions",
        "service_snapshots", "last_snapshot_epoch_ms", "last_snapshot_position",
        "last_snapshot_bytes", "last_snapshot_build_ms", "last_snapshot_write_ms",
    };

    private static final int[] COUNTER_TYPES = {
        AeronCounters.CLUSTER_COMMIT_POSITION_TYPE_ID,
        AeronCounters.CLUSTER_ELECTION_STATE_TYPE_ID,
        AeronCounters.CLUSTER_ELECTION_COUNT_TYPE_ID,
        AeronCounters.CLUSTER_SNAPSHOT_COUNTER_TYPE_ID,
        AeronCounters.CLUSTER_CONSENSUS_MODULE_ERROR_COUNT_TYPE_ID,
        AeronCounters.CLUSTER_CLIENT_TIMEOUT_COUNT_TYPE_ID,
        AeronCounters.CLUSTER_INVALID_REQUEST_COUNT_TYPE_ID,
        AeronCounters.CLUSTER_CLUSTERED_SERVICE_ERROR_COUNT_TYPE_ID,
        AeronCounters.CLUSTER_MAX_CYCLE_TIME_TYPE_ID,
        AeronCounters.CLUSTER_CYCLE_TIME_THRESHOLD_EXCEEDED_TYPE_ID,
        AeronCounters.CLUSTER_CLUSTERED_SERVICE_MAX_CYCLE_TIME_TYPE_ID,
    };

    private MemberMetrics()
    {
    }

    public static long[] sample(final MatchService service, final CountersReader counters, final int clusterId)
    {
        final long[] out = new long[NAMES.length];
        int i = 0;
        out[i++] = service.role();
        out[i++] = service.leaderMemberId();
        out[i++] = service.leadershipTermId();
        out[i++] = service.logPosition();
        for (final int typeId : COUNTER_TYPES)
        {
            out[i++] = read(counters, typeId, clusterId);
        }
        final MatchService.Counts c = service.counts();
        out[i++] = c.ingressMessages;
        out[i++] = c.egressMessages;
        out[i++] = c.backPressure;
        out[i++] = c.droppedReplies;
        out[i++] = c.leaderChanges;
        out[i++] = c.roleChanges;
        out[i++] = c.sessions;
        out[i++] = c.snapshots;
        out[i++] = c.lastSnapshotEpochMs;
        out[i++] = c.lastSnapshotPosition;
        out[i++] = c.lastSnapshot.bytes;
        out[i++] = c.lastSnapshot.buildMs;
        out[i++] = c.lastSnapshot.writeMs;
        return out;
    }

    private static long read(final CountersReader counters, final int typeId, final int clusterId)
    {
        if (null == counters)
        {
            return -1;
        }
        final int id = ClusterCounters.find(counters, typeId, clusterId);
        return id == CountersReader.NULL_COUNTER_ID ? -1 : counters.getCounterValue(id);
    }

    /** The leader this member's consensus module knows, asked as ClusterTool {@code list-members} does; -1 if none. */
    public static int leaderMemberId(final File clusterDir, final long timeoutMs)
    {
        final ClusterMembership membership = listMembers(clusterDir, timeoutMs);
        return null == membership ? -1 : membership.leaderMemberId;
    }

    /** ClusterTool {@code list-members} of this member's consensus module; null if it does not answer in time. */
    private static ClusterMembership listMembers(final File clusterDir, final long timeoutMs)
    {
        final ClusterMembership membership = new ClusterMembership();
        try
        {
            return ClusterTool.listMembers(membership, clusterDir, timeoutMs) ? membership : null;
        }
        catch (final RuntimeException ex)
        {
            return null;
        }
    }

    /**
     * Every member's appended log position as the leader knows it ({@code [memberId, position]}
     * pairs), asked of this member's consensus module as Aeron's ClusterTool {@code list-members}
     * does; empty when this member is not the leader or does not answer within {@code timeoutMs}.
     */
    public static long[] memberPositions(final File clusterDir, final long timeoutMs)
    {
        final ClusterMembership membership = listMembers(clusterDir, timeoutMs);
        if (null == membership || null == membership.activeMembers || membership.leaderMemberId != membership.memberId)
        {
            return new long[0];
        }
        final long[] out = new long[2 * membership.activeMembers.size()];
        int i = 0;
        for (final ClusterMember m : membership.activeMembers)
        {
            out[i++] = m.id();
            out[i++] = m.logPosition();
        }
        return out;
    }
}
