package io.matchx.cluster;

/**
 * Restarts a member that has stopped catching up: its election in FOLLOWER_CATCHUP and its commit
 * position unchanged for {@link #RESTART_AFTER_MS}.
 *
 * <p>Why: Aeron 1.51 ends a catch-up without progress only while the consensus module is ACTIVE
 * ({@code ConsensusModuleAgent.catchupPoll} throws "no catchup progress" after a heartbeat
 * timeout). Seen once (bench/reports/auth_revocation_driver_timer_2.md, docs/auth.md): a restarted
 * member stayed in FOLLOWER_CATCHUP for over 120 s with every thread idle after its partition
 * took a snapshot inside the range it was catching up, so its consensus module was not ACTIVE and
 * nothing would ever end the wait; a member in that state can neither vote nor follow, and the
 * next fault of its partition is an outage. Not reproduced since, so the cause is unknown; a fresh
 * start (snapshot and log replay) is the remedy that works for every such wait.
 *
 * <p>A real catch-up, however long, moves the commit position; so does a catch-up that ends
 * because the leader is gone (Aeron then leaves the step within a heartbeat timeout).
 */
final class CatchupStall
{
    /** Far above any pause of a moving catch-up (a snapshot taken in it: ~0.3 s at 100,000 orders). */
    static final long RESTART_AFTER_MS = 20_000;
    static final String STEP = "FOLLOWER_CATCHUP";

    private final String logPrefix;
    private long position = Long.MIN_VALUE;
    private long positionSinceMs = -1;
    private boolean restarting;

    CatchupStall(final String logPrefix)
    {
        this.logPrefix = logPrefix;
    }

    /**
     * One sample of the election step and the commit position; true once, when the member has
     * been in {@link #STEP} without a move of its commit position for {@link #RESTART_AFTER_MS}.
     */
    boolean stalled(final long nowMs, final String step, final long commitPosition)
    {
        if (restarting)
        {
            return false;
        }
        if (!STEP.equals(step) || commitPosition != position)
        {
            position = STEP.equals(step) ? commitPosition : Long.MIN_VALUE;
            positionSinceMs = nowMs;
            return false;
        }
        if (nowMs - positionSinceMs < RESTART_AFTER_MS)
        {
            return false;
        }
        restarting = true;
        return true;
    }

    /** {@link #stalled}, and if so the reason in the log and a restart of this process. */
    void check(final long nowMs, final String step, final long commitPosition)
    {
        if (stalled(nowMs, step, commitPosition))
        {
            System.err.println(logPrefix + " ERROR catch-up stalled: in " + STEP + " for " + RESTART_AFTER_MS +
                " ms without its commit position moving from " + commitPosition + "; Aeron gives this " +
                "wait no deadline unless the consensus module is ACTIVE. Restarting this process " +
                "(snapshot and log replay).");
            System.err.flush();
            ShutdownLatch.restart("catch-up stalled in " + logPrefix);
        }
    }
}
