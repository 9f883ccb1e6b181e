package lakehouse.hadoop;

import java.io.IOException;
import java.nio.file.Files;

import org.apache.hadoop.fs.FileStatus;
import org.apache.hadoop.fs.Path;
import org.apache.hadoop.fs.RawLocalFileSystem;
import org.apache.hadoop.fs.permission.FsPermission;

/**
 * Hadoop's raw local file system, without starting a process for two of its calls.
 *
 * <p>Without Hadoop's native library (pyspark ships none), {@link RawLocalFileSystem} runs
 * {@code chmod} for every file and directory it creates with a permission, and {@code readlink}
 * for every link status, which FileContext's rename asks for twice per file (so four times for
 * a file and its checksum): a streaming checkpoint's offsets and commits, and every Delta commit.
 * Each is a process started from the JVM, a few milliseconds apiece (bench/RESULTS.md, issue 16).
 * Here the mode is set through java.nio's {@code unix:mode} (chmod(2) in this process, keeping a
 * directory's setuid and setgid bits as the {@code chmod 0755} that Hadoop runs does), and a
 * path that is not a symbolic link gets its plain status, which is all the readlink gave it (for
 * a qualified {@code file:} path it never finds a link). A file system without Unix modes, and a
 * symbolic link, go to Hadoop's own code as before.
 */
public class InProcessRawLocalFileSystem extends RawLocalFileSystem {

  @Override
  public void setPermission(Path p, FsPermission permission) throws IOException {
    java.nio.file.Path path = pathToFile(p).toPath();
    try {
      int mode = permission.toShort() & 01777;  // the permission bits and the sticky bit
      if (Files.isDirectory(path)) {
        // as chmod with four octal digits does: a directory keeps its setuid and setgid bits
        mode |= (Integer) Files.getAttribute(path, "unix:mode") & 06000;
      }
      Files.setAttribute(path, "unix:mode", mode);
    } catch (UnsupportedOperationException | IllegalArgumentException notUnix) {
      super.setPermission(p, permission);
    }
  }

  @Override
  public FileStatus getFileLinkStatus(Path f) throws IOException {
    if (Files.isSymbolicLink(pathToFile(f).toPath())) {
      return super.getFileLinkStatus(f);
    }
    return getFileStatus(f);
  }
}
