package io.matchx.cluster;

import io.aeron.cluster.ConsensusModule;
import org.agrona.CloseHelper;

import java.util.concurrent.TimeUnit;

/**
 * A planned leader handover within Aeron open source, which has no leadership transfer: a leader
 * that is stopping (SIGTERM, {@code matchctl member restart}, {@code matchctl cluster handover})
 * closes its consensus module first, while its media driver still runs. Its log publication then
 * ends with an end-of-stream the followers receive at once; a follower whose log image closes
 * enters an election straight away ("log disconnected from leader: eos=true") instead of waiting
 * for the leader heartbeat timeout, as it must after a crash. The driver lingers a moment so the
 * end of stream is sent before it stops; then the rest of the member closes as before.
 */
final class Handover
{
    /**
     * How long the media driver keeps running after the consensus module closed, at least: the end
     * of stream travels on the closed publication's next idle heartbeat, sent one heartbeat interval
     * after its last frame ({@link SetupRepeat#HEARTBEAT_MS}; Aeron's 100 ms if that could not be
     * set). A driver closed before then never sends it, and the followers wait out the leader
     * heartbeat timeout instead (the 100 ms linger against a 100 ms heartbeat was such a race).
     */
    static final long LINGER_MS = 100;

    private Handover()
    {
    }

    /** Closes the consensus modules of the members that lead; true when there was one. */
    static boolean endLeadership(final String prefix, final MatchService service, final ConsensusModule consensusModule)
    {
        if (null == service || null == consensusModule || service.role() != 2)
        {
            return false;
        }
        final long started = System.nanoTime();
        CloseHelper.quietClose(consensusModule);
        System.err.println(prefix + " INFO leader stopping: log ended for a handover in " +
            TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - started) + " ms");
        System.err.flush();
        return true;
    }

    /** The linger in force: three heartbeat intervals, at least {@link #LINGER_MS}. */
    static long lingerMs()
    {
        return Math.max(LINGER_MS, 3 * TimeUnit.NANOSECONDS.toMillis(SetupRepeat.currentHeartbeat()));
    }

    /** Lets the driver send the end of stream before it is closed. */
    static void linger()
    {
        try
        {
            Thread.sleep(lingerMs());
        }
        catch (final InterruptedException ex)
        {
            Thread.currentThread().interrupt();
        }
    }
}
