package io.matchx.cluster;

import io.aeron.cluster.ClusterMember;
import io.aeron.cluster.ClusterMembership;

import java.io.File;
import java.util.concurrent.TimeUnit;
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
    static final long QUERY_TIMEOUT_MS = 500;

    private MembersBehind()
    {
    }

    /**
     * A member counts as out of step for this long after the leader last saw it behind: the lag
     * falls below {@link #LAG_BYTES} while its catch-up still runs, and a snapshot entry it meets
     * before its election closes is taken there (7 Dec 19:14, member_start: 369 ms at the end of a
     * catch-up, the snapshot asked for ~0.5 s before the member's election closed). Longer moves
     * the snapshot closer to the next fault: a member killed after the snapshot entry reached it
     * and before it had taken the snapshot takes it again in its own log replay.
     */
    static final long SETTLE_NS = TimeUnit.MILLISECONDS.toNanos(500);

    /**
     * Asked again after this long, the schedule is in a new wait (a check is 250 ms after the end
     * of the previous one, which may have waited {@link #QUERY_TIMEOUT_MS} for its answer).
     */
    static final long NEW_WAIT_AFTER_NS = TimeUnit.SECONDS.toNanos(2);

    /** What {@link #query} found: every member in step. */
    static final int NONE = -1;
    /** What {@link #query} found: the consensus module did not answer in time. */
    static final int NO_ANSWER = -2;
    /** What {@link #query} found: this member does not lead. */
    static final int NOT_LEADER = -3;

    /**
     * Whether a due snapshot of {@code service}'s member waits, asked only while it leads (a
     * follower's schedule takes nothing): a member is behind, the leader's consensus module does
     * not answer (a loaded member: it waits as far as the schedule's bound allows), or a member
     * was behind less than {@link #SETTLE_NS} ago. Logs when a wait begins and ends.
     */
    static BooleanSupplier ofLeader(final MatchService service, final File clusterDir, final String logPrefix)
    {
        // last seen behind; waiting since (-1: not waiting); last asked
        final long[] state = {System.nanoTime() - 2 * SETTLE_NS, -1, 0};
        return () ->
        {
            if (service.role() != 2)
            {
                return false;
            }
            final long nowNs = System.nanoTime();
            if (nowNs - state[2] > NEW_WAIT_AFTER_NS)
            {
                state[1] = -1;  // not asked since: the snapshot went ahead (overdue) or is no longer due
            }
            state[2] = nowNs;
            final int found = query(clusterDir, service.logPosition());
            if (found == NOT_LEADER)
            {
                return false;
            }
            final boolean wait = found != NONE || nowNs - state[0] < SETTLE_NS;
            if (found != NONE)
            {
                state[0] = nowNs;
            }
            if (wait && state[1] < 0)
            {
                state[1] = nowNs;
                System.err.println(logPrefix + " INFO snapshot due; it waits: " + (found == NO_ANSWER ?
                    "the consensus module did not answer within " + QUERY_TIMEOUT_MS + " ms" :
                    found >= 0 ? "member " + found + " is more than " + LAG_BYTES + " bytes behind" :
                    "a member was behind less than " + TimeUnit.NANOSECONDS.toMillis(SETTLE_NS) + " ms ago"));
            }
            else if (!wait && state[1] >= 0)
            {
                System.err.println(logPrefix + " INFO snapshot goes ahead: every member in step, after a wait of " +
                    TimeUnit.NANOSECONDS.toMillis(nowNs - state[1]) + " ms");
                state[1] = -1;
            }
            return wait;
        };
    }

    /**
     * The id of a member whose appended position is more than {@link #LAG_BYTES} behind
     * {@code leaderPosition}, {@link #NONE}, {@link #NO_ANSWER} or {@link #NOT_LEADER}, asked of this
     * member's consensus module as ClusterTool {@code list-members}.
     */
    static int query(final File clusterDir, final long leaderPosition)
    {
        final ClusterMembership membership = MemberMetrics.listMembers(clusterDir, QUERY_TIMEOUT_MS);
        if (null == membership || null == membership.activeMembers)
        {
            return NO_ANSWER;
        }
        if (membership.leaderMemberId != membership.memberId)
        {
            return NOT_LEADER;
        }
        for (final ClusterMember m : membership.activeMembers)
        {
            if (m.id() != membership.memberId && behind(leaderPosition, m.logPosition()))
            {
                return m.id();
            }
        }
        return NONE;
    }

    static boolean behind(final long leaderPosition, final long memberPosition)
    {
        return leaderPosition - memberPosition > LAG_BYTES;
    }
}
