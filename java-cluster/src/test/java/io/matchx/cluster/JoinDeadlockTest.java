package io.matchx.cluster;

import org.junit.jupiter.api.Test;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

class JoinDeadlockTest
{
    private static StackTraceElement frame(final String cls, final String method)
    {
        return new StackTraceElement(cls, method, "X.java", 1);
    }

    /** The two stacks of the member that stayed in FOLLOWER_LOG_AWAIT (bench/reports/stuck_election.md). */
    private static final StackTraceElement[] CONSENSUS = {
        frame("org.agrona.concurrent.BackoffIdleStrategy", "idle"),
        frame("io.aeron.cluster.ConsensusModuleAgent", "idle"),
        frame("io.aeron.cluster.ConsensusModuleAgent", "awaitServicesReady"),
        frame("io.aeron.cluster.ConsensusModuleAgent", "tryJoinLogAsFollower"),
        frame("io.aeron.cluster.Election", "followerLogAwait"),
    };
    private static final StackTraceElement[] SERVICE = {
        frame("org.agrona.concurrent.BackoffIdleStrategy", "idle"),
        frame("io.aeron.cluster.service.ClusteredServiceAgent", "idle"),
        frame("io.aeron.cluster.service.ClusteredServiceAgent", "awaitImage"),
        frame("io.aeron.cluster.service.ClusteredServiceAgent", "joinActiveLog"),
        frame("io.aeron.cluster.service.ClusteredServiceAgent", "pollServiceAdapter"),
    };

    @Test
    void bothWaitsOfALogJoinAreADeadlock()
    {
        assertTrue(JoinDeadlock.isDeadlock(CONSENSUS, SERVICE));
    }

    @Test
    void theConsensusModuleWaitingForItsServiceIsStuckWhateverTheServiceDoes()
    {
        // the service busy elsewhere (in a command, or blocked outside Aeron) never acks either
        final StackTraceElement[] serviceWorking = {
            frame("io.matchx.cluster.MatchService", "onSessionMessage"),
            frame("io.aeron.cluster.service.ClusteredServiceAgent", "onSessionMessage"),
        };
        assertTrue(JoinDeadlock.isDeadlock(CONSENSUS, serviceWorking));
        assertTrue(JoinDeadlock.isDeadlock(CONSENSUS, null));
    }

    @Test
    void aConsensusModuleOutsideTheWaitOrAServiceLoadingItsSnapshotIsNot()
    {
        final StackTraceElement[] consensusElecting = {
            frame("io.aeron.cluster.Election", "canvass"),
            frame("io.aeron.cluster.ConsensusModuleAgent", "doWork"),
        };
        assertFalse(JoinDeadlock.isDeadlock(consensusElecting, SERVICE));
        assertFalse(JoinDeadlock.isDeadlock(null, SERVICE));
        // a large snapshot's load may take seconds on a starved machine: not a stuck join
        final StackTraceElement[] loadingSnapshot = {
            frame("io.aeron.cluster.service.ClusteredServiceAgent", "awaitImage"),
            frame("io.aeron.cluster.service.ClusteredServiceAgent", "loadSnapshot"),
        };
        assertFalse(JoinDeadlock.isDeadlock(CONSENSUS, loadingSnapshot));
    }

    @Test
    void aRestartEndsTheProcessLatchWaitWithItsReason() throws Exception
    {
        final ShutdownLatch latch = new ShutdownLatch();
        ShutdownLatch.restart("join deadlock of consensus-module-0-2");
        assertEquals(ShutdownLatch.RESTART, latch.await());
        assertEquals("join deadlock of consensus-module-0-2", latch.restartReason());
        // once ended, a second request changes nothing
        ShutdownLatch.restart("again");
        assertEquals("join deadlock of consensus-module-0-2", latch.restartReason());
    }

    @Test
    void aShortStateChangeOrNoDeadlockNeverRestarts() throws Exception
    {
        final ShutdownLatch latch = new ShutdownLatch();
        // this JVM's threads are not a member's: no consensus-module-7-1 thread, never a deadlock
        final JoinDeadlock watch = new JoinDeadlock(7, 1, "[test]");
        for (long t = 0; t < 60_000; t += JoinDeadlock.SAMPLE_EVERY_MS)
        {
            watch.check(t, t, "FOLLOWER_LOG_AWAIT");
        }
        latch.release();
        assertEquals("", latch.await());
        assertEquals("", latch.restartReason());
    }
}
