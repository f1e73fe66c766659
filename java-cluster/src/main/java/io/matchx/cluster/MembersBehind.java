package io.matchx.cluster;

import io.aeron.cluster.ClusterMember;
import io.aeron.cluster.ClusterMembership;

import java.io.File;
import java.util.function.BooleanSupplier;

/**
 * Whether another member of a leader's cluster is out of step: killed, starting, replaying or
 * catching up, as the leader's consensus module knows its appended log position.
 *
 * <p>Why the snapshot schedule asks (#17): Aeron's snapshot is a log entry, and a member that was
 * out when the cluster took one takes it too when its catch-up replays that entry, from a state it
 * has just restored (its snapshot cache still cold), while it is not yet back in step. In the
 * fixed-kill runs at 100,000 resting orders that happened in 24 of 59 restarts and cost them
 * 243-740 ms in SNAPSHOT state (docs/operations.md, "Snapshots and recovery").
 */
final class MembersBehind
{
    /**
     * A member further behind the leader's applied position than this is out of step. A live
     * follower reports its appended position on every change, a few KB behind at 1,000 orders/s;
     * a member down 2 s at that rate is ~600 KB behind until its catch-up ends.
     */
    static final long LAG_BYTES = 64 * 1024;

    /** How long the leader's consensus module may take to answer before the question is dropped. */
    static final long QUERY_TIMEOUT_MS = 200;

    private MembersBehind()
    {
    }

    /** {@link #any} for {@code service}'s member, asked only while it leads (a follower's schedule takes nothing). */
    static BooleanSupplier ofLeader(final MatchService service, final File clusterDir)
    {
        return () -> service.role() == 2 && any(clusterDir, service.logPosition());
    }

    /**
     * True when this member leads and another member's appended position is more than
     * {@link #LAG_BYTES} behind {@code leaderPosition}; false when it does not lead or its consensus
     * module does not answer in time (the schedule then goes on as if every member were in step).
     */
    static boolean any(final File clusterDir, final long leaderPosition)
    {
        final ClusterMembership membership = MemberMetrics.listMembers(clusterDir, QUERY_TIMEOUT_MS);
        if (null == membership || null == membership.activeMembers || membership.leaderMemberId != membership.memberId)
        {
            return false;
        }
        for (final ClusterMember m : membership.activeMembers)
        {
            if (m.id() != membership.memberId && behind(leaderPosition, m.logPosition()))
            {
                return true;
            }
        }
        return false;
    }

    static boolean behind(final long leaderPosition, final long memberPosition)
    {
        return leaderPosition - memberPosition > LAG_BYTES;
    }
}
