package lakehouse.hadoop;

import java.io.IOException;
import java.net.URI;
import java.net.URISyntaxException;

import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.ChecksumFs;
import org.apache.hadoop.fs.DelegateToFileSystem;
import org.apache.hadoop.fs.FsConstants;
import org.apache.hadoop.fs.FsServerDefaults;
import org.apache.hadoop.fs.Path;
import org.apache.hadoop.fs.local.LocalConfigKeys;

/**
 * FileContext's local file system ({@code fs.AbstractFileSystem.file.impl}; Spark's streaming
 * checkpoints and Delta's log on local disk rename through it) over
 * {@link InProcessRawLocalFileSystem}: Hadoop's {@code org.apache.hadoop.fs.local.LocalFs}, whose
 * raw layer cannot be given another file system. (Not a subclass of it: Spark's
 * {@code AbstractFileContextBasedCheckpointFileManager.isLocal()}, which checks for one, has no
 * caller in Spark 4.1.)
 */
public class InProcessLocalFs extends ChecksumFs {

  public InProcessLocalFs(URI uri, Configuration conf) throws IOException, URISyntaxException {
    super(new Raw(conf));  // as LocalFs, whatever the URI it is made for: file:///
  }

  /** As {@code org.apache.hadoop.fs.local.RawLocalFs}. */
  static final class Raw extends DelegateToFileSystem {

    Raw(Configuration conf) throws IOException, URISyntaxException {
      super(FsConstants.LOCAL_FS_URI, new InProcessRawLocalFileSystem(), conf, FsConstants.LOCAL_FS_URI.getScheme(),
            false);
    }

    @Override
    public int getUriDefaultPort() {
      return -1;  // no default port for file:///
    }

    @Override
    public FsServerDefaults getServerDefaults(Path f) throws IOException {
      return LocalConfigKeys.getServerDefaults();
    }

    @Override
    @Deprecated
    public FsServerDefaults getServerDefaults() throws IOException {
      return LocalConfigKeys.getServerDefaults();
    }

    @Override
    public boolean isValidName(String src) {
      return true;  // any path string is valid on the local file system
    }
  }
}
