package io.matchx.cluster;

import java.util.Random;
import java.util.function.IntSupplier;
import java.util.function.LongSupplier;

/**
 * Which survivor nominates itself first after a leader is gone: the lowest member id other than
 * the leader that was lost, at once; every other one half an election timeout later.
 *
 * <p>Why: Aeron makes every survivor that qualifies (its log at least as long as everyone's)
 * wait a random {@code [0, electionTimeout / 2)} before it nominates itself ({@code
 * Election.canvass}, the only use of {@code ConsensusModule.Context.random()}). After a planned
 * handover both survivors have the same log, both qualify, and they nominate ~5 ms apart on
 * average; when that is less than one message's flight the votes split and both wait the
 * election timeout before a new round. With this source the preferred survivor nominates with no
 * delay and the other votes for it; if the preferred one cannot (it is down too, or its log is
 * shorter, so it does not qualify), the other nominates half an election timeout later, which is
 * Aeron's longest random delay: never later than Aeron would have.
 *
 * <p>Before this member has seen a leader (a fresh start, when every member is a candidate and
 * the start-up nominations should spread) the delay stays random.
 */
final class NominationOrder extends Random
{
    private static final long serialVersionUID = 1L;
    /** The delay fraction of a survivor that is not the preferred one (just below Aeron's bound). */
    static final double LATER = 0.999;

    private final int memberId;
    private final int memberCount;
    private final transient IntSupplier lastLeader;
    /** The election timeout a delay is meant to be a fraction of, and the one Aeron multiplies by. */
    private transient volatile LongSupplier intendedTimeoutNs;
    private transient volatile LongSupplier contextTimeoutNs;

    NominationOrder(final int memberId, final int memberCount, final IntSupplier lastLeader)
    {
        this.memberId = memberId;
        this.memberCount = memberCount;
        this.lastLeader = lastLeader;
    }

    /** The survivor that nominates at once when {@code leader} is gone; -1 without a known leader. */
    static int preferred(final int leader, final int memberCount)
    {
        if (leader < 0 || memberCount < 2)
        {
            return -1;
        }
        return leader == 0 ? 1 : 0;
    }

    /**
     * Aeron draws a nomination delay as {@code nextDouble() * contextTimeout / 2}; ElectionTiming
     * keeps the context's election timeout long outside a candidacy (a voter's wait), so the
     * fraction is scaled to give the delay of the intended timeout.
     */
    void scaleTo(final LongSupplier intendedTimeoutNs, final LongSupplier contextTimeoutNs)
    {
        this.intendedTimeoutNs = intendedTimeoutNs;
        this.contextTimeoutNs = contextTimeoutNs;
    }

    @Override
    public double nextDouble()
    {
        final int leader = null == lastLeader ? -1 : lastLeader.getAsInt();
        final int first = preferred(leader, memberCount);
        final double fraction;
        if (first < 0 || leader == memberId)
        {
            fraction = super.nextDouble();
        }
        else
        {
            fraction = first == memberId ? 0.0 : LATER;
        }
        return scaled(fraction, null == intendedTimeoutNs ? 0 : intendedTimeoutNs.getAsLong(),
            null == contextTimeoutNs ? 0 : contextTimeoutNs.getAsLong());
    }

    /** {@code fraction} of {@code intendedNs} as a fraction of {@code contextNs} (unchanged without both). */
    static double scaled(final double fraction, final long intendedNs, final long contextNs)
    {
        if (intendedNs <= 0 || contextNs <= 0 || intendedNs >= contextNs)
        {
            return fraction;
        }
        return fraction * ((double)intendedNs / (double)contextNs);
    }
}
