package io.matchx.cluster;

import org.agrona.concurrent.IdleStrategy;

import java.util.concurrent.CopyOnWriteArrayList;

/**
 * A media driver that wakes the consensus modules and archives of the members it serves after a
 * duty cycle that moved a payload, so that they may park up to {@code idle.woken.max.park.us}
 * instead of polling every 1 ms for frames only the driver sees arrive ({@link AgentWakeups}).
 *
 * <p>Why a payload and not any work: an idle member's driver sends and receives a lone heartbeat,
 * status message or setup frame (at most 40 bytes) hundreds of times a second, and none of them is
 * for the consensus module or the archive; the smallest frame that is (a consensus message) is 64
 * bytes. Aeron's sender and receiver count bytes as their work, so the threshold of
 * {@link LightWorkBackoff#DEFAULT_LIGHT_WORK} tells them apart. A wake-up costs the driver one
 * {@code unpark} per woken thread; a woken agent with nothing to do parks again without restarting
 * its backoff. One instance per driver: a member process's serves one member, a worker's all it hosts.
 */
final class PayloadWakeups
{
    /** A duty cycle with more work than this moved a payload (one frame of more than 40 bytes, or several). */
    static final int PAYLOAD_WORK = LightWorkBackoff.DEFAULT_LIGHT_WORK;

    private final CopyOnWriteArrayList<AgentWakeups> members = new CopyOnWriteArrayList<>();

    /** {@code wakeups} (a member's, with woken parks) is woken from now on, and may park long. */
    void add(final AgentWakeups wakeups)
    {
        if (null != wakeups && wakeups.wokenParks())
        {
            members.add(wakeups);
            wakeups.drivenByDriver(true);
        }
    }

    /** A member that leaves a worker: no more wake-ups; its agents park short until they close. */
    void remove(final AgentWakeups wakeups)
    {
        if (null != wakeups && members.remove(wakeups))
        {
            wakeups.drivenByDriver(false);
        }
    }

    /** {@code inner} as the driver's idle strategy: it wakes the members after a cycle that moved a payload. */
    IdleStrategy wrap(final IdleStrategy inner)
    {
        return new DelegatingIdleStrategy(inner)
        {
            public void idle(final int workCount)
            {
                if (workCount > PAYLOAD_WORK)
                {
                    for (final AgentWakeups member : members)
                    {
                        member.payloadMoved();
                    }
                }
                inner.idle(workCount);
            }
        };
    }
}
