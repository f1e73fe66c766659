package io.aeron.cluster;

import io.aeron.archive.Archive;
import io.aeron.archive.ArchiveThreadingMode;
import io.aeron.driver.MediaDriver;
import io.aeron.driver.ThreadingMode;
import io.aeron.driver.status.SystemCounterDescriptor;
import org.agrona.CloseHelper;
import org.agrona.ErrorHandler;
import org.agrona.concurrent.Agent;
import org.agrona.concurrent.AgentInvoker;
import org.agrona.concurrent.AgentRunner;
import org.agrona.concurrent.IdleStrategy;
import org.agrona.concurrent.status.AtomicCounter;

/**
 * A {@link ClusteredMediaDriver} whose media driver and archive share one agent thread: both run
 * in INVOKER mode and one runner invokes the archive, whose conductor invokes the driver (Aeron
 * requires the archive in INVOKER mode once the driver is). The consensus module keeps its own
 * thread, so a member stopping as leader can close it while the driver goes on sending
 * (io.matchx.cluster.Handover). One agent thread fewer per member (matchx's {@code threading=compact}).
 *
 * <p>It lives in Aeron's package only because {@link ClusteredMediaDriver}'s constructor is
 * package-private; callers keep the type MemberNode already uses.
 */
public final class CompactClusteredMediaDriver extends ClusteredMediaDriver
{
    private final AgentRunner ioRunner;

    private CompactClusteredMediaDriver(
        final MediaDriver driver, final Archive archive, final ConsensusModule consensusModule, final AgentRunner ioRunner)
    {
        super(driver, archive, consensusModule);
        this.ioRunner = ioRunner;
    }

    public static ClusteredMediaDriver launch(
        final MediaDriver.Context driverCtx,
        final Archive.Context archiveCtx,
        final ConsensusModule.Context consensusModuleCtx,
        final IdleStrategy ioIdle,
        final ErrorHandler errorHandler)
    {
        MediaDriver driver = null;
        Archive archive = null;
        AgentRunner runner = null;
        ConsensusModule consensusModule = null;
        try
        {
            // as ClusteredMediaDriver.launch, with both in INVOKER mode
            driver = MediaDriver.launch(driverCtx.threadingMode(ThreadingMode.INVOKER).spiesSimulateConnection(true));
            archive = Archive.launch(archiveCtx
                .threadingMode(ArchiveThreadingMode.INVOKER)
                .aeronDirectoryName(driverCtx.aeronDirectoryName())
                .mediaDriverAgentInvoker(driver.sharedAgentInvoker())
                .errorHandler(errorHandler)
                .errorCounter(new AtomicCounter(driverCtx.countersValuesBuffer(), SystemCounterDescriptor.ERRORS.id())));
            final AgentInvoker archiveInvoker = archive.invoker();
            runner = new AgentRunner(ioIdle, errorHandler, null, new Agent()
            {
                public int doWork()
                {
                    return archiveInvoker.invoke();
                }

                public String roleName()
                {
                    return "driver-archive";
                }
            });
            AgentRunner.startOnThread(runner);
            consensusModule = ConsensusModule.launch(consensusModuleCtx.aeronDirectoryName(driverCtx.aeronDirectoryName()));
            return new CompactClusteredMediaDriver(driver, archive, consensusModule, runner);
        }
        catch (final RuntimeException ex)
        {
            CloseHelper.closeAll(consensusModule, runner, archive, driver);
            throw ex;
        }
    }

    public void close()
    {
        // the consensus module first (it may already be closed: a handover), then the thread that
        // runs the archive and the driver, and only then those two: an invoker is not to be
        // closed while another thread invokes it
        CloseHelper.closeAll(consensusModule(), ioRunner, archive(), mediaDriver());
    }
}
