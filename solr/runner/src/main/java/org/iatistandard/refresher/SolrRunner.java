package org.iatistandard.refresher;

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import org.apache.solr.client.solrj.impl.CloudSolrClient;
import org.apache.solr.client.solrj.request.CollectionAdminRequest;
import org.apache.solr.cloud.MiniSolrCloudCluster;
import org.apache.solr.embedded.JettyConfig;
import org.apache.solr.embedded.JettySolrRunner;

/**
 * A SolrCloud on loopback: an embedded ZooKeeper and {@code --nodes} Solr nodes (Solr's own
 * MiniSolrCloudCluster), the configsets uploaded from {@code --configsets} as trusted
 * configsets, and for each collection NAME what solr/create-collections.sh creates:
 * configset NAME_configset_VERSION, collection NAME_VERSION (one shard, one replica per node
 * up to {@code --replicas}) and the aliases NAME_solrize (writes) and NAME (reads).
 *
 * <p>When it is ready it prints one JSON line on stdout: {@code {"url": ..., "nodes": [...],
 * "zk": ...}}. It then reads commands from stdin, one per line, and answers each with one
 * JSON line: {@code stop N} stops node N (0-based), {@code start N} starts it again on the
 * same port, {@code quit} (or the end of stdin, when the parent is gone) shuts it all down.
 */
public final class SolrRunner {
  private SolrRunner() {}

  public static void main(String[] args) throws Exception {
    Map<String, String> options = parse(args);
    Path baseDir = Paths.get(options.getOrDefault("base-dir", Files.createTempDirectory("solr-runner").toString()));
    Path configsets = Paths.get(options.get("configsets"));
    int nodes = Integer.parseInt(options.getOrDefault("nodes", "1"));
    int replicas = Integer.parseInt(options.getOrDefault("replicas", String.valueOf(nodes)));
    String version = options.getOrDefault("version", "1");
    String[] names = options.getOrDefault("collections", "activity,transaction,budget").split(",");
    PrintStream out = new PrintStream(System.out, true, StandardCharsets.UTF_8);
    System.setOut(new PrintStream(System.err, true, StandardCharsets.UTF_8)); // stdout is the protocol
    Files.createDirectories(baseDir);
    System.setProperty("solr.log.dir", baseDir.resolve("logs").toString());

    MiniSolrCloudCluster cluster =
        new MiniSolrCloudCluster(nodes, baseDir, JettyConfig.builder().setPort(0).build());
    Runtime.getRuntime().addShutdownHook(new Thread(() -> shutdown(cluster)));
    CloudSolrClient client = cluster.getSolrClient();
    for (String name : names) {
      String configset = name + "_configset_" + version;
      String collection = name + "_" + version;
      cluster.uploadConfigSet(configsets.resolve(name).resolve("conf"), configset);
      CollectionAdminRequest.createCollection(collection, configset, 1, Math.min(replicas, nodes))
          .process(client);
      cluster.waitForActiveCollection(collection, 120, TimeUnit.SECONDS, 1, Math.min(replicas, nodes));
      CollectionAdminRequest.createAlias(name + "_solrize", collection).process(client);
      CollectionAdminRequest.createAlias(name, collection).process(client);
    }
    // The cluster forgets a stopped node: keep them all, so "start N" finds node N again.
    List<JettySolrRunner> all = new ArrayList<>(cluster.getJettySolrRunners());
    out.println(describe(cluster, all));

    BufferedReader commands = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
    String line;
    while ((line = commands.readLine()) != null) {
      String[] words = line.trim().split("\\s+");
      try {
        switch (words[0]) {
          case "stop" -> {
            JettySolrRunner node = all.get(Integer.parseInt(words[1]));
            cluster.stopJettySolrRunner(node);
            cluster.waitForJettyToStop(node);
            out.println("{\"stopped\": " + words[1] + "}");
          }
          case "start" -> {
            JettySolrRunner node = all.get(Integer.parseInt(words[1]));
            cluster.startJettySolrRunner(node, true);
            cluster.waitForNode(node, 120);
            for (String name : names) {
              cluster.waitForActiveCollection(name + "_" + version, 120, TimeUnit.SECONDS, 1,
                  Math.min(replicas, nodes));
            }
            out.println("{\"started\": " + words[1] + ", \"url\": \"" + node.getBaseUrl() + "\"}");
          }
          case "status" -> out.println(describe(cluster, all));
          case "quit" -> {
            shutdown(cluster);
            out.println("{\"quit\": true}");
            System.exit(0);
          }
          default -> out.println("{\"error\": \"unknown command\"}");
        }
      } catch (Exception e) {
        out.println("{\"error\": \"" + e.toString().replace("\\", "\\\\").replace("\"", "'") + "\"}");
      }
    }
    shutdown(cluster);
    System.exit(0);
  }

  private static String describe(MiniSolrCloudCluster cluster, List<JettySolrRunner> all) {
    List<String> urls = new ArrayList<>();
    for (JettySolrRunner node : all) {
      urls.add("\"" + node.getBaseUrl() + "\"");
    }
    return "{\"url\": " + urls.get(0) + ", \"nodes\": [" + String.join(", ", urls) + "], \"zk\": \""
        + cluster.getZkServer().getZkAddress() + "\"}";
  }

  private static volatile boolean down;

  private static synchronized void shutdown(MiniSolrCloudCluster cluster) {
    if (down) {
      return;
    }
    down = true;
    try {
      cluster.shutdown();
    } catch (Exception e) {
      System.err.println("solr-runner: shutdown: " + e);
    }
  }

  private static Map<String, String> parse(String[] args) {
    Map<String, String> options = new LinkedHashMap<>();
    for (int i = 0; i + 1 < args.length; i += 2) {
      if (!args[i].startsWith("--")) {
        throw new IllegalArgumentException("expected --name value, got " + args[i]);
      }
      options.put(args[i].substring(2), args[i + 1]);
    }
    if (!options.containsKey("configsets")) {
      throw new IllegalArgumentException("--configsets DIR is required");
    }
    return options;
  }
}
